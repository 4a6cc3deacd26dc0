"""`biomedgpt-export`: a fairseq checkpoint to `model.safetensors` + `config.json`, and back.

    biomedgpt-export export runs/vqa/checkpoint_best.pt export/vqa [--ema] [--overrides JSON] [--force]
    biomedgpt-export import export/vqa vqa.pt       # a checkpoint for fairseq-generate --path / biomedgpt-ask
"""
import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="biomedgpt-export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="checkpoint.pt -> folder with model.safetensors and config.json")
    export.add_argument("checkpoint", help="fairseq checkpoint, e.g. checkpoint_best.pt")
    export.add_argument("output_dir", help="folder to write model.safetensors and config.json into")
    export.add_argument("--ema", action="store_true", help="export the EMA weights stored by --store-ema")
    export.add_argument("--overrides", default="{}",
                        help='JSON settings replacing the checkpoint\'s, as fairseq\'s --model-overrides, '
                             'e.g. \'{"ans2label_file": "answers.pkl"}\'')
    export.add_argument("--force", action="store_true", help="replace an existing export in output_dir")
    to_fairseq = commands.add_parser("import", help="folder with model.safetensors and config.json -> checkpoint.pt")
    to_fairseq.add_argument("export_dir", help="folder written by `biomedgpt-export export`")
    to_fairseq.add_argument("output", help="fairseq checkpoint to write (.pt)")
    opts = parser.parse_args(argv)

    from ..export import ExportFormatError, ExportMismatchError, export_checkpoint, import_checkpoint

    try:
        if opts.command == "export":
            try:
                overrides = json.loads(opts.overrides)
            except json.JSONDecodeError as exc:
                parser.error(f"--overrides is not valid JSON: {exc}")
            weights, config = export_checkpoint(opts.checkpoint, opts.output_dir, ema=opts.ema,
                                                overrides=overrides or None, overwrite=opts.force)
            print(f"wrote {weights} and {config}")
        else:
            print(f"wrote {import_checkpoint(opts.export_dir, opts.output)}")
    except (ExportFormatError, ExportMismatchError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"biomedgpt-export: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
