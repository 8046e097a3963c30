"""Student loading: device and dtype choice, model and adapter resolution, MLflow adapters, 4-bit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from distill.errors import ConfigError
from distill.models import (
    choose_dtype_name,
    describe_model,
    load_student,
    pick_device,
    pick_dtype,
    resolve_adapter,
    resolve_model_path,
)
from distill.tiny_qwen3 import tiny_qwen3_path

PROBE_TEXTS = [
    "고려 광종은 노비안검법을 실시하여 호족 세력을 약화시켰다. 정답: 2",
    "애덤 스미스는 공감과 정의의 규칙을 시장의 전제로 보았다.",
    "기회비용은 포기한 대안 가운데 가장 큰 가치이다. 정답: 4",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _logits(model, tokenizer, texts=PROBE_TEXTS):
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float(), batch["attention_mask"].bool()


@pytest.fixture(scope="module")
def adapter_setup(tmp_path_factory):
    """A saved LoRA adapter on tiny-qwen3 with non-zero B matrices (so it changes the logits),
    and the logits of the in-memory PeftModel it came from."""
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_student("tiny-qwen3", device="cpu")
    base_logits, _ = _logits(base, tokenizer)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft_model = get_peft_model(base, config).eval()
    adapter_logits, mask = _logits(peft_model, tokenizer)
    directory = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(directory)
    return {"dir": directory, "logits": adapter_logits, "base_logits": base_logits, "mask": mask}


# ----------------------------------------------------------------------------- device and dtype


@pytest.mark.parametrize(
    ("device_type", "capability", "requested", "expected"),
    [
        ("cuda", (7, 0), "auto", "fp16"),  # V100: no bf16
        ("cuda", (7, 5), "auto", "fp16"),  # T4
        ("cuda", (8, 0), "auto", "bf16"),  # A100
        ("cuda", (8, 9), "auto", "bf16"),  # L4 / RTX 4090
        ("cuda", (9, 0), "auto", "bf16"),  # H100
        ("cpu", None, "auto", "fp32"),
        ("mps", None, "auto", "fp32"),
        ("cuda", (7, 0), "bf16", "bf16"),  # explicit choices are honoured
        ("cuda", (9, 0), "fp32", "fp32"),
        ("cpu", None, "fp16", "fp16"),
        ("cpu", None, "bfloat16", "bf16"),
        ("cuda", (8, 0), "float16", "fp16"),
        ("cuda", (8, 0), " AUTO ", "bf16"),
        ("cpu", None, None, "fp32"),
    ],
)
def test_dtype_decision_table(device_type, capability, requested, expected):
    assert choose_dtype_name(device_type, capability, requested) == expected


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="dtype"):
        choose_dtype_name("cpu", None, "int3")


def test_pick_dtype_on_cpu():
    import torch

    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cpu", "bf16") is torch.bfloat16
    assert pick_dtype("cpu", "fp16") is torch.float16


def test_pick_device():
    import torch

    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda:1") == "cuda:1"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device() == expected
    assert pick_device("auto") == expected


# ----------------------------------------------------------------------------- model resolution


def test_resolve_model_path_kinds(tmp_path):
    assert resolve_model_path("tiny-qwen3") == str(tiny_qwen3_path(0))
    assert resolve_model_path(tmp_path) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen3-14B") == "Qwen/Qwen3-14B"  # left to the hub
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path("./no/such/model")
    with pytest.raises(ConfigError, match="integer seed"):
        resolve_model_path("tiny-qwen3@abc")
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_model_path(a_file)


def test_hub_id_offline_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not be found locally"):
        load_student("distill-test/no-such-model-anywhere", device="cpu")


def test_load_student_defaults():
    model, tokenizer = load_student("tiny-qwen3")
    assert not model.training
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    info = describe_model(model)
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["num_trainable_parameters"] == info["num_parameters"]
    expected_device = pick_device()
    assert info["device"].split(":")[0] == expected_device
    assert info["dtype"] == str(pick_dtype(expected_device)).replace("torch.", "")
    assert not info["load_in_4bit"]


def test_load_student_sets_pad_to_eos_when_missing(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_qwen3_path(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)

    model, tokenizer = load_student(str(tmp_path), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id


def test_explicit_dtype_is_applied():
    import torch

    model, _ = load_student("tiny-qwen3", device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype is torch.bfloat16
    assert describe_model(model)["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------- adapters


def test_resolve_adapter_local_layouts(tmp_path, adapter_setup):
    adapter = adapter_setup["dir"]
    assert resolve_adapter(adapter) == adapter
    assert resolve_adapter(str(adapter / "adapter_config.json")) == adapter
    # An MLflow model downloaded to disk keeps the adapter below artifacts/.
    assert resolve_adapter(adapter.parent) == adapter


def test_resolve_adapter_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        resolve_adapter(tmp_path / "empty")
    for name in ("a", "b"):
        (tmp_path / "two" / name).mkdir(parents=True)
        (tmp_path / "two" / name / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="several adapters"):
        resolve_adapter(tmp_path / "two")


def test_adapter_from_local_dir_reproduces_in_memory_logits(adapter_setup):
    import torch

    model, tokenizer = load_student("tiny-qwen3", adapter=adapter_setup["dir"], device="cpu")
    logits, mask = _logits(model, tokenizer)
    torch.testing.assert_close(logits[mask], adapter_setup["logits"][mask], atol=1e-5, rtol=1e-5)
    # and the adapter really changes the model
    assert (logits[mask] - adapter_setup["base_logits"][mask]).abs().max() > 1e-2
    assert not model.training
    assert describe_model(model)["num_trainable_parameters"] == 0


def test_adapter_for_training_is_trainable_and_unmerged(adapter_setup):
    from peft import PeftModel

    model, _ = load_student("tiny-qwen3", adapter=adapter_setup["dir"], device="cpu", for_training=True)
    assert isinstance(model, PeftModel)
    assert model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    info = describe_model(model)
    assert 0 < info["num_trainable_parameters"] < info["num_parameters"]


def test_adapter_from_mlflow_runs_uri(mlflow_store, adapter_setup):
    import mlflow
    import torch

    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(adapter_setup["dir"]), artifact_path="adapter")
        # the layout of a logged pyfunc model: the adapter under <model>/artifacts/<name>
        mlflow.log_artifacts(str(adapter_setup["dir"]), artifact_path="student/artifacts/adapter")
    run_id = run.info.run_id

    direct = resolve_adapter(f"runs:/{run_id}/adapter")
    assert (direct / "adapter_config.json").is_file()
    nested = resolve_adapter(f"runs:/{run_id}/student")
    assert nested.name == "adapter" and nested.parent.name == "artifacts"

    model, tokenizer = load_student("tiny-qwen3", adapter=f"runs:/{run_id}/adapter", device="cpu")
    logits, mask = _logits(model, tokenizer)
    torch.testing.assert_close(logits[mask], adapter_setup["logits"][mask], atol=1e-5, rtol=1e-5)

    # URIs that hold no adapter: clear errors, not tracebacks from deep inside MLflow
    with mlflow.start_run() as empty_run:
        mlflow.log_param("nothing", "here")
    with pytest.raises(ConfigError, match="could not be downloaded|no adapter_config.json"):
        resolve_adapter(f"runs:/{empty_run.info.run_id}/adapter")
    with pytest.raises(ConfigError, match="could not be downloaded"):
        resolve_adapter("models:/no-such-model@champion")


# ----------------------------------------------------------------------------- 4-bit on CPU


def test_4bit_nf4_on_cpu_is_close_to_fp32():
    import torch
    from bitsandbytes.nn import Linear4bit

    full, tokenizer = load_student("tiny-qwen3", device="cpu")
    quant, _ = load_student("tiny-qwen3", device="cpu", load_in_4bit=True)
    linears = [m for m in quant.modules() if isinstance(m, Linear4bit)]
    assert len(linears) == 2 * 7  # every projection of both layers
    assert linears[0].weight.quant_type == "nf4"
    assert linears[0].weight.quant_state.nested  # double quantisation

    ref, mask = _logits(full, tokenizer)
    out, _ = _logits(quant, tokenizer)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # really quantised
    cosine = torch.nn.functional.cosine_similarity(out[mask].flatten(), ref[mask].flatten(), dim=0)
    assert cosine > 0.95
    agreement = (out[mask].argmax(-1) == ref[mask].argmax(-1)).float().mean()
    assert agreement > 0.8

    info = describe_model(quant)
    assert info["load_in_4bit"]
    assert info["num_parameters"] == describe_model(full)["num_parameters"]  # logical size
    assert quant.get_memory_footprint() < full.get_memory_footprint()


def test_4bit_with_adapter_and_lora_gradients_on_cpu(adapter_setup):
    """What QLoRA training needs: an adapter over NF4 weights whose LoRA parameters get finite,
    non-zero gradients through the quantised layers."""
    import torch

    model, tokenizer = load_student(
        "tiny-qwen3", adapter=adapter_setup["dir"], device="cpu", load_in_4bit=True, for_training=True
    )
    batch = tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0

    model.eval()
    out, mask = _logits(model, tokenizer)
    cosine = torch.nn.functional.cosine_similarity(out[mask].flatten(), adapter_setup["logits"][mask].flatten(), dim=0)
    assert cosine > 0.95


def test_4bit_without_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ConfigError, match="bitsandbytes"):
        load_student("tiny-qwen3", device="cpu", load_in_4bit=True)


def test_models_module_keeps_heavy_and_gpu_imports_out():
    source = Path(sys.modules["distill.models"].__file__).read_text(encoding="utf-8")
    assert "unsloth" not in source.replace("Unsloth is GPU-only", "")
    import subprocess

    code = "import sys, distill.models; print(sorted(m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- the logged adapter model


def test_logged_model_names_pass_mlflow_validation():
    from mlflow.utils.validation import _validate_logged_model_name

    from distill.adapter_model import logged_model_name

    name = logged_model_name("orpo λ=0.13 r=8 lr=1.6e-4 pairs=59")
    assert name == "orpo-λ=0_13-r=8-lr=1_6e-4-pairs=59"
    _validate_logged_model_name(name)  # raises on a name MLflow refuses
    _validate_logged_model_name(logged_model_name("a/b:c%d'e\"f"))
    assert logged_model_name("adapter") == "adapter"


def test_the_base_is_recorded_as_the_user_named_it(tmp_path):
    from distill.adapter_model import base_model_reference, recorded_config

    cache = resolve_model_path("tiny-qwen3")
    tiny = recorded_config({"base_model": "tiny-qwen3", "base_model_path": cache})
    assert tiny == {"base_model": "tiny-qwen3"}  # the cache folder is this machine's, not the model's
    assert base_model_reference(tiny) == "tiny-qwen3"
    hub = recorded_config({"base_model": "Qwen/Qwen3-14B", "base_model_path": "Qwen/Qwen3-14B"})
    assert hub == {"base_model": "Qwen/Qwen3-14B"}
    (tmp_path / "mine").mkdir()
    own = recorded_config({"base_model": str(tmp_path / "mine"), "base_model_path": cache})
    assert own["base_model_path"] == str((tmp_path / "mine").resolve())
    assert base_model_reference(own) == str((tmp_path / "mine").resolve())
    with pytest.raises(ValueError, match="base_model"):
        recorded_config({"base_model_path": cache})


class _Records(__import__("logging").Handler):
    """Every record MLflow's loggers emit (they do not propagate to pytest's caplog)."""

    def __init__(self):
        super().__init__(level=0)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_log_adapter_model_from_code_with_signature_and_no_warnings(mlflow_store, adapter_setup, tmp_path):
    import json
    import logging
    import warnings

    import mlflow
    import pandas as pd
    import yaml

    from distill.adapter_model import log_adapter_model
    from distill.paths import distill_home
    from distill.scoring import score_choices
    from tests.train_helpers import synthetic_items

    items = synthetic_items(3, heldout=True, seed=0)
    config = {
        "base_model": "tiny-qwen3",
        "base_model_path": resolve_model_path("tiny-qwen3"),  # what the train stage resolved: a cache folder
        "base_model_seed": 0,
        "base_load_in_4bit": False,
        "base_dtype": "auto",
        "scoring_thinking": "off",
        "scoring_batch_size": 2,
        "train_backend": "lora",
    }
    assert config["base_model_path"].startswith(str(distill_home()))
    mlflow.set_experiment("adapter-model-test")
    handler = _Records()
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, mlflow.start_run() as run:
            warnings.simplefilter("always")
            mlflow.log_params({"student": "tiny-qwen3", "lora_r": 4})
            info = log_adapter_model(
                adapter_setup["dir"],
                config,
                name="orpo λ=0.13 r=4",
                input_example=items[:2],
                params={"pairs_trained": 59},
                tags={"distill.kind": "adapter"},
            )
    finally:
        mlflow_logger.removeHandler(handler)
    noisy = [r for r in handler.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage()[:200] for r in noisy]
    from_mlflow = [w for w in caught if "mlflow" in str(w.filename) or "mlflow" in str(w.message).lower()]
    assert not from_mlflow, [f"{w.filename}:{w.lineno} {str(w.message)[:200]}" for w in from_mlflow]

    # Logged from code: no pickled object, the code file named in the flavor.
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    assert not list(local.rglob("*.pkl"))
    flavor = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("adapter_model_code.py")
    assert "model_config" not in flavor

    # Signature, input example, and the base recorded as named (no cache folder anywhere).
    assert info.name == "orpo-λ=0_13-r=4"
    assert info.signature is not None
    assert [c.name for c in info.signature.inputs.inputs][:3] == ["id", "paragraph", "question"]
    assert {p.name: p.default for p in info.signature.params.params} == {"thinking": "off", "batch_size": 2}
    example = mlflow.models.Model.load(info.model_uri).load_input_example(str(local))
    assert example["id"].tolist() == [item.id for item in items[:2]]
    assert info.metadata["distill"]["base_model"] == "tiny-qwen3"
    assert "base_model_path" not in info.metadata["distill"]
    stored = (local / "artifacts" / "distill_model.json").read_text(encoding="utf-8")
    assert json.loads(stored)["base_model"] == "tiny-qwen3" and str(distill_home()) not in stored
    assert str(distill_home()) not in (local / "MLmodel").read_text(encoding="utf-8")

    # The config is not duplicated into the run's params; params and tags reach the logged model.
    run_params = mlflow.get_run(run.info.run_id).data.params
    assert run_params == {"student": "tiny-qwen3", "lora_r": "4"}
    logged = mlflow.MlflowClient().get_logged_model(info.model_id)
    assert logged.params["pairs_trained"] == "59" and logged.params["student"] == "tiny-qwen3"
    assert logged.tags["distill.kind"] == "adapter" and logged.tags["distill.base_model"] == "tiny-qwen3"

    # The loaded model scores as the adapter does, labelled, unlabelled or partly labelled.
    model, tokenizer = load_student("tiny-qwen3", adapter=adapter_setup["dir"], device="cpu")
    expected = score_choices(model, tokenizer, items, thinking=False, batch_size=2, progress=False)
    frame = pd.DataFrame([item.to_dict() for item in items])
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    predicted = pyfunc.predict(frame)
    assert predicted["id"].tolist() == [item.id for item in items]
    assert predicted["gold"].tolist() == [item.answer for item in items]
    for k in range(1, 5):
        assert predicted[f"score_{k}"].tolist() == pytest.approx([s[k - 1] for s in expected], abs=1e-5)
    assert "gold" not in pyfunc.predict(frame.drop(columns=["answer"])).columns
    partly = pyfunc.predict(frame.assign(answer=[items[0].answer, None, items[2].answer]))
    assert partly["gold"].tolist()[0] == items[0].answer and pd.isna(partly["gold"].tolist()[1])
