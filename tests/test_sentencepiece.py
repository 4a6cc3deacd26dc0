"""SentencePiece vocabularies for from-scratch training: `biomedgpt-train-spm` and the `--bpe-dir` detection."""
import base64
import os
import random

import pytest
import torch

from biomedgpt.cli.train_spm import main as train_spm_main
from biomedgpt.data.bpe import build_bpe, detect_bpe_kind
from biomedgpt.data.dictionary import PACKAGED_BPE_DIR, build_ofa_dictionary
from biomedgpt.data.text import TextEncoder

WORDS = ("the image shows a chest x ray with lung opacity heart of normal size what does describe left right "
         "lesion in brain mri scan pneumonia fracture abdomen tumor benign malignant cardiomegaly pleural effusion "
         "nodule is there any sign no yes ct ultrasound liver kidney bone organ").split()
PROMPTS = [" what does the image describe?", " is there any sign of pneumonia?", "the chest x ray is normal.",
           "no", " yes"]
VOCAB_SIZE = 64


def synthetic_sentences(n=400, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        out.append(" ".join(words) + rng.choice([".", "?", ""]))
    return out + [p.strip() for p in PROMPTS]


def read_dict(path):
    with open(path, encoding="utf-8") as f:
        return [line.rsplit(" ", 1) for line in f.read().splitlines()]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    text = root / "train.txt"
    text.write_text("\n".join(synthetic_sentences()) + "\n", encoding="utf-8")
    out = root / "bpe"
    assert train_spm_main(["--input", str(text), "--vocab-size", str(VOCAB_SIZE), "--output-dir", str(out)]) == 0
    return str(out), str(text)


def test_writes_model_and_a_dict_covering_every_piece(spm_dir, capsys):
    out, text = spm_dir
    assert {"spm.model", "spm.vocab", "dict.txt"} <= set(os.listdir(out))
    assert not any(name.endswith(".train.txt") for name in os.listdir(out))
    entries = read_dict(os.path.join(out, "dict.txt"))
    symbols = [s for s, _ in entries]
    assert len(symbols) == VOCAB_SIZE - 1  # every piece but <unk>
    assert len(set(symbols)) == len(symbols)
    assert not {"<s>", "<pad>", "</s>", "<unk>"} & set(symbols)
    assert all(int(c) >= 0 for _, c in entries)

    bpe = build_bpe(out)
    assert bpe.kind == "sentencepiece"
    produced = {}
    with open(text, encoding="utf-8") as f:
        for line in f:
            for piece in bpe.encode(line.rstrip("\n")).split():
                produced[piece] = produced.get(piece, 0) + 1
    assert set(produced) <= set(symbols)
    counts = dict((s, int(c)) for s, c in entries)
    assert all(counts[p] == n for p, n in produced.items())  # counts = pieces of the encoded training text


def test_ofa_dictionary_from_sentencepiece_dir(spm_dir):
    out, _ = spm_dir
    n = len(read_dict(os.path.join(out, "dict.txt")))
    d = build_ofa_dictionary(out)
    assert len(d) == 4 + n + 1 + 8192 + 1000
    assert d.index("<mask>") == 4 + n
    assert d.index("<code_0>") == 4 + n + 1
    assert d.index("<bin_0>") == 4 + n + 1 + 8192
    assert len(build_ofa_dictionary(out, code_dict_size=16, num_bins=10)) == 4 + n + 1 + 16 + 10


def test_detect_bpe_kind(spm_dir, tmp_path):
    assert detect_bpe_kind(spm_dir[0]) == "sentencepiece"
    assert detect_bpe_kind(PACKAGED_BPE_DIR) == "gpt2"
    assert detect_bpe_kind(None) == "gpt2"
    with pytest.raises(FileNotFoundError) as err:
        detect_bpe_kind(str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg
    for name in ("encoder.json", "vocab.bpe", "dict.txt", "spm.model"):
        assert name in msg
    (tmp_path / "dict.txt").write_text("a 1\n")
    with pytest.raises(FileNotFoundError, match="found: dict.txt"):
        detect_bpe_kind(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        detect_bpe_kind(str(tmp_path / "missing"))


def test_both_sets_in_one_dir_is_an_error(spm_dir, tmp_path):
    for name in ("encoder.json", "vocab.bpe", "dict.txt"):
        (tmp_path / name).write_bytes(open(os.path.join(PACKAGED_BPE_DIR, name), "rb").read())
    (tmp_path / "spm.model").write_bytes(open(os.path.join(spm_dir[0], "spm.model"), "rb").read())
    with pytest.raises(ValueError, match="both"):
        detect_bpe_kind(str(tmp_path))


def test_spm_model_with_gpt2_dict_is_an_error(spm_dir, tmp_path):
    (tmp_path / "dict.txt").write_bytes(open(os.path.join(PACKAGED_BPE_DIR, "dict.txt"), "rb").read())
    (tmp_path / "spm.model").write_bytes(open(os.path.join(spm_dir[0], "spm.model"), "rb").read())
    with pytest.raises(ValueError, match="none of the pieces"):
        build_bpe(str(tmp_path))


def test_text_encoder_round_trip(spm_dir):
    out, _ = spm_dir
    d = build_ofa_dictionary(out)
    enc = TextEncoder(build_bpe(out), d)
    for text in PROMPTS + synthetic_sentences(20, seed=5):
        ids = enc.encode(text)
        assert ids.dtype == torch.long and len(ids) > 0
        assert d.unk() not in ids.tolist(), text
        assert int(ids.max()) < d.index("<mask>")  # only text symbols
        assert enc.decode(ids) == text.strip()
    # the prompts' leading space does not change the pieces
    assert enc.encode(" what does the image describe?").tolist() == enc.encode("what does the image describe?").tolist()
    # bos/eos/pad are dropped on decode; an unknown character becomes <unk>, not an error
    ids = enc.encode(" is there any sign?", append_bos=True, append_eos=True)
    assert enc.decode(torch.cat([ids, torch.tensor([d.pad()])])) == "is there any sign?"
    assert d.unk() in enc.encode(" what is \u20ac?").tolist()


def test_is_beginning_of_word(spm_dir):
    bpe = build_bpe(spm_dir[0])
    pieces = bpe.encode(" pneumonia effusion").split()
    assert bpe.is_beginning_of_word(pieces[0])
    assert [bpe.is_beginning_of_word(p) for p in pieces].count(True) == 2


def test_gpt2_dir_builds_the_gpt2_bpe():
    bpe = build_bpe(PACKAGED_BPE_DIR)
    assert bpe.kind == "gpt2"
    d = build_ofa_dictionary(PACKAGED_BPE_DIR)
    assert len(d) == 59457
    enc = TextEncoder(bpe, d)
    ids = enc.encode(" what does the image describe?")
    assert d.unk() not in ids.tolist()
    assert enc.decode(ids) == "what does the image describe?"


def test_cli_reads_only_the_given_tsv_columns(tmp_path, capsys):
    rng = random.Random(3)
    rows = []
    for i, sentence in enumerate(synthetic_sentences(300, seed=1)):
        image = base64.b64encode(bytes(rng.randrange(256) for _ in range(90))).decode()
        question = " ".join(rng.choice(WORDS) for _ in range(4)) + "?"
        rows.append("\t".join([str(i), image, sentence, question]))
    tsv = tmp_path / "train.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "bpe"
    argv = ["--input", str(tsv), "--tsv-cols", "2,3", "--vocab-size", "70", "--output-dir", str(out),
            "--model-type", "bpe", "--character-coverage", "1.0"]
    assert train_spm_main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("spm.model", "spm.vocab", "dict.txt"):
        assert os.path.join(str(out), name) in printed
    assert f"--bpe-dir {out}" in printed
    symbols = [s for s, _ in read_dict(out / "dict.txt")]
    assert len(symbols) == 69
    allowed = set("".join(WORDS) + ".?\u2581")
    assert all(set(s) <= allowed for s in symbols), "a piece from the base64 column got into the vocabulary"
    assert detect_bpe_kind(str(out)) == "sentencepiece"
    # deterministic: the same command gives the same vocabulary and counts
    first = (out / "dict.txt").read_text()
    assert train_spm_main(argv) == 0
    assert (out / "dict.txt").read_text() == first


def test_cli_errors(tmp_path, capsys):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("0\tabc\n", encoding="utf-8")
    out = str(tmp_path / "bpe")
    assert train_spm_main(["--input", str(tsv), "--tsv-cols", "2", "--vocab-size", "50", "--output-dir", out]) == 2
    assert "train.tsv:1" in capsys.readouterr().err
    assert train_spm_main(["--input", str(tmp_path / "nope.txt"), "--vocab-size", "50", "--output-dir", out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert train_spm_main(["--input", str(tsv), "--vocab-size", "5000", "--output-dir", out]) == 1
    assert "Vocabulary size" in capsys.readouterr().err
    gpt2_dir = tmp_path / "gpt2"
    gpt2_dir.mkdir()
    (gpt2_dir / "encoder.json").write_text("{}")
    assert train_spm_main(["--input", str(tsv), "--vocab-size", "50", "--output-dir", str(gpt2_dir)]) == 2
    assert "GPT-2" in capsys.readouterr().err
    assert sorted(os.listdir(gpt2_dir)) == ["encoder.json"]
