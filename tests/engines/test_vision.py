"""Vision-language models (issue 28): tiny random LLaVA, Idefics3 and Qwen2-VL models with processors built
here, and a small image-question data set of coloured squares; from loading to search, ensemble and export.

Qwen2-VL's `AutoProcessor` needs torchvision (for its video processor), which this machine cannot install:
its tests hand the engine the same processor built for images only, and a test shows the one line a user
without torchvision gets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.support import make_shapes_data, make_tiny_vlm, qwen2_vl_processor, search_argv
from thickets.cli.commands import main
from thickets.engines import load_engine
from thickets.randopt.config import SearchConfig
from thickets.randopt.preflight import VISION_PARTS, prepare
from thickets.randopt.scoring import generate, render_prompts, task_for
from thickets.randopt.store import RunStore, candidate_model
from thickets.tasks.splits import make_splits

FAMILIES = ["llava", "idefics3", "qwen2_vl"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_data(tmp_path_factory.mktemp("shapes"), n=12)


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    folder = make_tiny_vlm(tmp_path_factory.mktemp(request.param) / "model", request.param)
    if request.param != "qwen2_vl":
        yield folder
        return
    import thickets.engines

    load = thickets.engines.load_processor
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            thickets.engines,
            "load_processor",
            lambda i: qwen2_vl_processor(folder) if Path(i.path) == folder.resolve() else load(i),
        )
        yield folder


def test_without_torchvision_a_qwen2_vl_model_is_refused_in_one_line_naming_it(shapes, tmp_path, capsys):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: AutoProcessor builds Qwen2-VL's processor")
    folder = make_tiny_vlm(tmp_path / "qwen2_vl", "qwen2_vl")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(search_argv(folder, run, task=f"vqa:{shapes}")) == 2
    _one_line(capsys, "cannot load the processor", "torchvision")
    assert not run.exists()


def _config(model: Path, shapes: Path, **kw) -> SearchConfig:
    base = dict(model=str(model), task=f"vqa:{shapes}", population=3, sigmas=(0.05,), val_size=4, max_new_tokens=4)
    return SearchConfig(**{**base, **kw})


def test_a_vision_language_model_answers_each_image_alike_alone_and_in_a_batch(vlm, shapes):
    engine, _ = load_engine(str(vlm), batch_size=4)
    assert engine.processor is not None and engine.decoder == "generate"
    config = _config(vlm, shapes)
    task = task_for(config)
    val, _ = make_splits(task, 0, 4)
    together = generate(engine, task, val, config)
    engine.batch_size = 1
    assert generate(engine, task, val, config) == together
    # the answer depends on the image: the same question about other squares is answered otherwise somewhere
    other = [
        type(ex)(ex.id, ex.prompt, {**ex.data, "image": val[(i + 1) % 4].data["image"]}) for i, ex in enumerate(val)
    ]
    assert generate(engine, task, other, config) != together


def test_a_chat_template_kept_for_the_processor_alone_renders_the_prompts(shapes, tmp_path):
    """Many vision-language checkpoints keep their chat template in chat_template.json, which the processor
    reads and the tokenizer does not: the prompts still get the image placeholder, and the model sees it."""
    folder = make_tiny_vlm(tmp_path / "llava", "llava")
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    engine, _ = load_engine(str(folder), batch_size=2)
    assert engine.tokenizer.chat_template == template
    config = _config(folder, shapes)
    task = task_for(config)
    val, _ = make_splits(task, 0, 2)
    assert all("<image>" in p for p in render_prompts(engine.tokenizer, task, val, config))
    assert len(generate(engine, task, val, config)) == 2


def test_a_new_run_perturbs_the_language_model_only_and_restores_it_bitwise(vlm, shapes, tmp_path):
    config, _, _, _ = prepare(_config(vlm, shapes), tmp_path / "run")
    assert config.exclude and set(config.exclude) <= set(VISION_PARTS)
    engine, _ = load_engine(str(vlm))
    before = {n: p.detach().clone() for n, p in engine.params.items()}
    spec = config.candidate(0)
    engine.perturb(spec)
    moved = {n for n, p in engine.params.items() if not torch.equal(p, before[n])}
    engine.restore()
    assert all(torch.equal(p, before[n]) for n, p in engine.params.items())
    vision = {n for n in before if not spec.filter.keeps(n)}
    assert vision and any("vision" in n or "visual" in n for n in vision)  # the tower is there, left alone
    assert moved and not moved & vision and any("lm_head" in n or "embed_tokens" in n for n in moved)
    # asked for, the tower moves too
    wide = SearchConfig(**{**config.to_dict(), "include": ("*",), "exclude": ()}).candidate(0)
    engine.perturb(wide)
    assert any(not torch.equal(engine.params[n], before[n]) for n in vision if before[n].dim() > 1)
    engine.restore()


def test_search_ensemble_and_export_of_a_run_about_images(shapes, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = make_tiny_vlm(tmp_path / "llava", "llava")
    run = tmp_path / "run"
    argv = search_argv(model, run, task=f"vqa:{shapes}", population=3, val_size=4, max_new_tokens=4)
    assert main(argv) == 0
    assert main(["ensemble", "--run-dir", str(run), "--top-k", "1,3", "--test-size", "4"]) == 0
    assert main(["analyze", "--run-dir", str(run)]) == 0 and (run / "report.html").exists()
    report = json.loads((run / "report.json").read_text())
    assert report["test_size"] == 4 and len(report["ensembles"]) == 2
    with RunStore.open(run, write=False) as store:
        config = store.config
        best = sorted(store.candidates(), key=lambda c: (-c.score, -c.accuracy, c.idx))[0]
        stored = store.completions(candidate_model(best.idx), "val")
    assert any("vision" in p for p in config.exclude)  # the record says what was left alone
    capsys.readouterr()
    assert main(["export", "--run-dir", str(run), "--rank", "1", "--out", str(tmp_path / "best")]) == 0
    AutoModelForImageTextToText.from_pretrained(tmp_path / "best")
    AutoProcessor.from_pretrained(tmp_path / "best")
    exported, _ = load_engine(str(tmp_path / "best"))
    task = task_for(config)
    val, _ = make_splits(task, config.split_seed, config.val_size, scheme=config.split_scheme)
    assert generate(exported, task, val, config) == [stored[i] for i in range(len(val))]


def _one_line(capsys, *contains: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in contains:
        assert text in err, err


def test_what_cannot_be_done_is_refused_in_one_line_before_anything_is_written(
    vlm, shapes, tiny_model_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(search_argv(tiny_model_dir, run, task=f"vqa:{shapes}")) == 2
    _one_line(capsys, "asks about images", "reads text only")
    lowrank = ("--noise", "lowrank", "--rank", "2", "--population-batch", "2")
    assert main(search_argv(vlm, run, *lowrank, task=f"vqa:{shapes}")) == 2
    _one_line(capsys, "population batching does not take images")
    rows = {
        "missing": {"image": "nowhere.png", "question": "Q?", "answer": "red"},
        "garbage": {"image": "junk.png", "question": "Q?", "answer": "red"},
        "two": {"image": ["img0.png", "img1.png"], "question": "Q?", "answer": "red"},
        "remote": {"image": "https://example.com/a.png", "question": "Q?", "answer": "red"},
    }
    (shapes.parent / "junk.png").write_bytes(b"not an image")
    messages = {"missing": "cannot read image", "garbage": "not one PIL can read", "two": "2 images in one row",
                "remote": "is a URL"}  # fmt: skip
    for name, row in rows.items():
        bad = shapes.parent / f"{name}.jsonl"
        bad.write_text(json.dumps(row) + "\n")
        assert main(search_argv(vlm, run, task=f"vqa:{bad}")) == 2
        _one_line(capsys, messages[name])
    assert not run.exists()


def _data_url(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_served_vote_answers_chat_messages_with_an_image(shapes, tiny_model_dir, tmp_path, capsys):
    """image_url parts as base64 data URLs, answered by the vote of experts that each see the image; a remote
    URL, two images, or an image for a text model are one 400 each."""
    openai = pytest.importorskip("openai")
    import httpx

    from thickets.ship.serve.config import ServeConfig
    from thickets.ship.serve.server import InThread, experts_of

    model = make_tiny_vlm(tmp_path / "llava", "llava")
    run = tmp_path / "run"
    assert main(search_argv(model, run, task=f"vqa:{shapes}", population=3, val_size=4, max_new_tokens=4)) == 0
    server = InThread(ServeConfig(run_dir=str(run), top_k=2, adaptive="off"))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        image = shapes.parent / "img1.png"
        question = "What colour is the square?\nAnswer the question using a single word or phrase."
        content = [{"type": "image_url", "image_url": {"url": _data_url(image)}}, {"type": "text", "text": question}]
        reply = client.chat.completions.create(
            model="run-top2", messages=[{"role": "user", "content": content}], max_tokens=4
        )
        vote = reply.model_extra["thickets"]
        assert vote["k"] == 2 and vote["experts_asked"] == 2
        # each expert alone on the same rendered prompt and image: the reply is one of theirs
        engine, _ = load_engine(str(model))
        tok = engine.tokenizer
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        specs, _ = experts_of(ServeConfig(run_dir=str(run), top_k=2))
        alone = []
        for spec in specs:
            engine.perturb(spec)
            alone += engine.generate_images([rendered], [image.read_bytes()], 4, ())
            engine.restore()
        assert reply.choices[0].message.content == alone[vote["returned_expert"] - 1]
        h = httpx.Client(base_url=server.url, timeout=60)
        ok = {"model": "run-top2", "max_tokens": 2}
        remote = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
        two = [content[0], content[0], content[1]]
        for parts, message in ((remote, "fetches nothing"), (two, "one image a request")):
            bad = h.post("/v1/chat/completions", json={**ok, "messages": [{"role": "user", "content": parts}]})
            assert bad.status_code == 400 and message in bad.json()["error"]["message"]
    finally:
        server.stop()
    text_run = tmp_path / "text"
    assert main(search_argv(tiny_model_dir, text_run, population=2)) == 0
    text_server = InThread(ServeConfig(run_dir=str(text_run), top_k=1))
    try:
        bad = httpx.post(
            f"{text_server.url}/v1/chat/completions",
            json={"model": "text-top1", "messages": [{"role": "user", "content": content}], "max_tokens": 2},
            timeout=60,
        )
        assert bad.status_code == 400 and "reads text only" in bad.json()["error"]["message"]
    finally:
        text_server.stop()


def test_distilling_a_run_about_images_trains_the_language_model_on_the_traces_with_their_images(shapes, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = make_tiny_vlm(tmp_path / "llava", "llava")
    run = tmp_path / "run"
    assert main(search_argv(model, run, task=f"vqa:{shapes}", population=2, val_size=2, max_new_tokens=2)) == 0
    argv = ["distill", "--run-dir", str(run), "--top-k", "2", "--train-size", "6", "--test-size", "2"]
    argv += ["--filter", "vote", "--lora-r", "4", "--learning-rate", "0.05", "--epochs", "1"]
    assert main(argv) == 0
    record = json.loads((run / "distill" / "round-1" / "round.json").read_text())
    assert record["kept_total"] > 0 and record["train_losses"]
    out = Path(record["model"]["path"])
    AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)  # saved beside the weights: the distilled model reads images too
    before, after = load_file(model / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [n for n in before if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)  # LoRA left the tower alone
    assert any(not torch.equal(before[n], after[n]) for n in before if "language_model" in n)
    # its test report scored the distilled model on the images
    assert record["test"]["distilled"]["accuracy"] is not None and record["test"]["test_size"] == 2
