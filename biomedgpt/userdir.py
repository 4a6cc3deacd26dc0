"""Print the directory to pass to fairseq's `--user-dir` (`python -m biomedgpt.userdir`)."""
import os

USER_DIR = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    print(USER_DIR)


if __name__ == "__main__":
    main()
