"""The commands that generate candidates on the way (`cappy boost --backend`, `cappy adapt`): one default recipe,
and a default generation cache, so adapt-then-boost and reruns generate nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cappy.batch import generation_cache_path
from cappy.cli import build_parser, main
from cappy.generate import DEFAULT_RECIPE, load_recipe
from conftest import build_tiny_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on two shared cores

# a tiny run: 32 pairs in batches of 8 at length 64 (the adapted scorer only has to exist)
FAST = {"num_pairs": 32, "batch_size": 8, "per_device_batch_size": 8, "max_length": 64}
PROMPTS = ["Q: What is the capital of France?\nA:", "Q: Name a primary colour.\nA:"]
REFS = [["Paris"], ["red", "blue"]]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CAPPY_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """The tiny random GPT-2 of the generation tests, saved as a folder the hf backend loads."""
    model, tok = build_tiny_lm("causal")
    d = tmp_path_factory.mktemp("lm") / "tiny-gpt2"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def recipe_file(tmp_path):
    """Three short candidates per prompt (the shipped recipes ask for more tokens than the tiny LM's 40 positions)."""
    p = tmp_path / "tiny.yaml"
    p.write_text(
        "name: tiny\nmin_new_tokens: 1\nmax_new_tokens: 4\n"
        "decodings:\n  - {method: greedy}\n  - {method: sample, temperature: 0.9, n: 2}\n"
    )
    return p


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_every_command_defaults_to_the_one_recipe(tiny_lm_dir, cache_dir, tmp_path):
    """boost and generate generate DEFAULT_RECIPE's candidates when --recipe is not given; serve, best_of_n, adapt and
    eval bigbench name it as their default."""
    import inspect

    from cappy import adaptation, boost
    from cappy.evaluate import BigBenchEvalConfig

    assert DEFAULT_RECIPE == "cpu8_stop" and load_recipe(DEFAULT_RECIPE).stop  # a recipe with stop strings
    assert build_parser().parse_args(["serve"]).recipe == DEFAULT_RECIPE
    assert inspect.signature(boost.best_of_n).parameters["recipe"].default == DEFAULT_RECIPE
    assert adaptation.AdaptConfig().recipe == DEFAULT_RECIPE  # adapt's settings, its Python API included
    assert BigBenchEvalConfig().recipe == DEFAULT_RECIPE
    inp = tmp_path / "p.jsonl"
    inp.write_text(json.dumps({"prompt": "Hi"}) + "\n")  # 32 new tokens fit the tiny LM's 40 positions
    gen = ["--backend", "hf", "--gen-model", str(tiny_lm_dir), "--device", "cpu"]
    out = tmp_path / "out.jsonl"
    assert main(["boost", "--input", str(inp), "--output", str(out), "--strategy", "random", *gen]) == 0
    rows = _rows(generation_cache_path("hf", str(tiny_lm_dir), DEFAULT_RECIPE))
    assert {r["recipe"] for r in rows} == {DEFAULT_RECIPE} and len(rows) == load_recipe(DEFAULT_RECIPE).num_candidates
    gens = tmp_path / "gens.jsonl"
    assert main(["generate", "--input", str(inp), "--out", str(gens), "--no-progress", *gen]) == 0
    assert {r["recipe"] for r in _rows(gens)} == {DEFAULT_RECIPE}


def test_default_cache_path_names_generator_recipe_and_seed(tmp_path, monkeypatch, recipe_file):
    monkeypatch.setenv("CAPPY_CACHE", str(tmp_path / "c"))
    gen = tmp_path / "c" / "generations"
    assert generation_cache_path("hf", "google/flan-t5-base", "cpu8_stop", 3) == (
        gen / "hf-google--flan-t5-base-cpu8_stop-seed3.jsonl"
    )
    llama = generation_cache_path("llamacpp", None, DEFAULT_RECIPE)
    assert llama.parent == gen and llama.name.startswith("llamacpp-") and llama.name.endswith("-cpu8_stop-seed0.jsonl")
    # two local folders of one name, and one model name on two servers: never one cache
    (tmp_path / "a" / "m").mkdir(parents=True)
    (tmp_path / "b" / "m").mkdir(parents=True)
    a, b = (generation_cache_path("hf", str(tmp_path / x / "m"), "quick") for x in "ab")
    assert a != b and a.name.startswith("hf-m-") and b.name.startswith("hf-m-")
    s1 = generation_cache_path("openai", "m", "quick", base_url="http://one:8000/v1")
    s2 = generation_cache_path("openai", "m", "quick", base_url="http://two:8000/v1")
    assert s1 != s2
    # a recipe file: its name and its content's hash (an edited file is another recipe)
    r1 = generation_cache_path("hf", "x/y", recipe_file)
    recipe_file.write_text(recipe_file.read_text().replace("max_new_tokens: 4", "max_new_tokens: 5"))
    r2 = generation_cache_path("hf", "x/y", recipe_file)
    assert r1 != r2 and "-tiny-" in r1.name and "-tiny-" in r2.name
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        generation_cache_path("hf", "x/y", "nope")
    monkeypatch.delenv("CAPPY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert generation_cache_path("hf", "x/y", "quick").parent == tmp_path / "home" / ".cache" / "cappy" / "generations"


def test_adapt_then_boost_share_the_default_cache_and_a_rerun_generates_nothing(
    tiny_lm_dir, tiny_model_dir, recipe_file, cache_dir, tmp_path, capsys, monkeypatch
):
    train = tmp_path / "task.jsonl"
    train.write_text("".join(json.dumps({"instruction": p, "references": r}) + "\n" for p, r in zip(PROMPTS, REFS)))
    gen_args = ["--backend", "hf", "--gen-model", str(tiny_lm_dir), "--recipe", str(recipe_file), "--device", "cpu"]
    adapt = ["adapt", "--train", str(train), "--model", str(tiny_model_dir("bert")), "--out", str(tmp_path / "m")]
    adapt += ["--no-progress", *gen_args, *[x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]]
    assert main(adapt) == 0
    cache = generation_cache_path("hf", str(tiny_lm_dir), str(recipe_file), 0)
    assert str(cache) in capsys.readouterr().err  # the command says where its candidates are kept
    rows = _rows(cache)
    assert len(rows) == 2 * 3 and {r["prompt"] for r in rows} == set(PROMPTS)
    assert {r["recipe"] for r in rows} == {"tiny"} and {r["model"] for r in rows} == {str(tiny_lm_dir)}

    # boosting the same prompts with the same generator and recipe: every candidate comes from that cache, and no
    # generator is even built (one that would fail proves it)
    import cappy.generate

    def no_generator(*args, **kwargs):
        raise AssertionError("a generator was loaded although the cache holds every prompt")

    monkeypatch.setattr(cappy.generate, "load_generator", no_generator)
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p, "references": r}) + "\n" for p, r in zip(PROMPTS, REFS)))
    boost = ["boost", "--input", str(inp), "--output", str(tmp_path / "out.jsonl"), "--no-progress"]
    boost += ["--model", str(tmp_path / "m" / "model"), "--scorer-device", "cpu", *gen_args]
    assert main(boost) == 0
    assert _rows(cache) == rows  # nothing appended
    picked = _rows(tmp_path / "out.jsonl")
    by_prompt = {p: [r["text"] for r in rows if r["prompt"] == p] for p in PROMPTS}
    assert [[c["text"] for c in r["candidates"]] for r in picked] == [by_prompt[p] for p in PROMPTS]
    # and the adaptation's own rerun reuses both the candidates and the trained model
    assert main(adapt) == 0
    assert "(reused)" in capsys.readouterr().err and _rows(cache) == rows


def test_gens_overrides_and_no_cache_disables_the_default_cache(tiny_lm_dir, recipe_file, cache_dir, tmp_path, capsys):
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    base = ["boost", "--input", str(inp), "--output", str(tmp_path / "out.jsonl"), "--strategy", "first:greedy"]
    base += ["--no-progress", "--backend", "hf", "--gen-model", str(tiny_lm_dir), "--recipe", str(recipe_file)]
    base += ["--device", "cpu"]
    assert main([*base, "--no-cache"]) == 0
    assert not cache_dir.exists()  # generated, used, kept nowhere
    assert len(_rows(tmp_path / "out.jsonl")) == 2
    mine = tmp_path / "mine.jsonl"
    assert main([*base, "--gens", str(mine)]) == 0
    assert len(_rows(mine)) == 2 * 3 and not cache_dir.exists()
    capsys.readouterr()
    assert main([*base, "--gens", str(mine), "--no-cache"]) == 2
    assert "--no-cache and --gens" in capsys.readouterr().err
    assert main(["boost", "--input", str(inp), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "give --gens" in capsys.readouterr().err


def test_boost_input_is_checked_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from cappy import Cappy

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Cappy, "from_pretrained", classmethod(refuse))
    gens = tmp_path / "gens.jsonl"
    gens.write_text("")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = ["boost", "--gens", str(gens), "--output", str(tmp_path / "o.jsonl")]
    assert main([*base, "--input", str(empty)]) == 2
    assert f"{empty}: the input is empty" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such input file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q"}) + "\n")
    assert main([*base, "--input", str(wrong)]) == 2
    assert f"{wrong}:1: missing field 'prompt'" in capsys.readouterr().err


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("llama_cpp"), reason="llama-cpp-python is not installed"
)
def test_llama_cpp_log_lines_only_with_verbose(tmp_path, recipe_file):
    """llama.cpp's own lines (``llama_kv_cache_iswa: ...`` on each context it makes) stay off stderr unless
    --verbose; the packaged Gemma GGUF, one prompt, three candidates of at most 4 tokens."""
    inp = tmp_path / "p.jsonl"
    inp.write_text(json.dumps({"prompt": "Q: What is 2+2?\nA:"}) + "\n")
    args = ["generate", "--backend", "llamacpp", "--input", str(inp), "--recipe", str(recipe_file)]
    args += ["--n-threads", "1", "--n-ctx", "256", "--no-progress"]
    exe = [sys.executable, "-m", "cappy"]
    quiet = subprocess.run([*exe, *args, "--out", str(tmp_path / "a.jsonl")], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "llama_" not in quiet.stderr and "cappy generate: 1 prompts" in quiet.stderr
    loud = subprocess.run([*exe, "-v", *args, "--out", str(tmp_path / "b.jsonl")], capture_output=True, text=True)
    assert loud.returncode == 0, loud.stderr
    assert "llama_kv_cache_iswa" in loud.stderr  # the line the quiet run kept off
