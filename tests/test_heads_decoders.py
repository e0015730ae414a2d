"""Sequence and token classification heads of the newer decoder families (estimators/families/_decoder.py,
_heads.py): GenericForSequenceClassification / GenericForTokenClassification (transformers/
modeling_layers.py) on qwen3, phi3, gemma2, gemma3_text, mixtral and qwen3_moe, checked against
transformers' own classes on the meta device and against a real CPU training step."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from memprof.estimators.families import FAMILIES  # noqa: E402
from memprof.estimators.heads import family_heads  # noqa: E402
from memprof.estimators.models import spec_from_config  # noqa: E402
from memprof.profiles import data_path  # noqa: E402
from memprof.tiny_models import AUTO_HEADS  # noqa: E402

transformers.logging.set_verbosity_error()

PRESETS = {
    "qwen3": "qwen3-8b",
    "phi3": "phi-3-mini",
    "gemma2": "gemma-2-9b",
    "gemma3_text": "gemma-3-12b",
    "mixtral": "mixtral-8x7b",
    "qwen3_moe": "qwen3-30b-a3b",
}
CASES = [(f, h) for f in PRESETS for h in family_heads(FAMILIES[f]) if h in ("seq-cls", "token-cls")]


def test_each_family_has_the_heads_transformers_has():
    heads = {f: sorted(h for h in family_heads(FAMILIES[f]) if h != "causal-lm") for f in PRESETS}
    assert heads == {
        "qwen3": ["seq-cls", "token-cls"],
        "phi3": ["seq-cls", "token-cls"],
        "gemma2": ["seq-cls", "token-cls"],
        "gemma3_text": ["seq-cls"],  # transformers has no Gemma3TextForTokenClassification
        "mixtral": ["seq-cls", "token-cls"],
        "qwen3_moe": ["seq-cls", "token-cls"],
    }
    for family, classes in ((f, family_heads(FAMILIES[f])) for f in PRESETS):
        for cls in classes.values():
            assert hasattr(transformers, cls), (family, cls)


@pytest.mark.parametrize(("family", "head"), CASES)
@pytest.mark.parametrize("labels", [None, 5])
def test_the_head_lists_the_real_classes_named_parameters(family, head, labels):
    config = json.loads(data_path("models", f"{PRESETS[family]}.json").read_text())["config"]
    if labels is not None:
        config.pop("num_labels", None)
        config["id2label"] = {str(i): f"L{i}" for i in range(labels)}
    config.pop("architectures", None)
    spec = spec_from_config(config, name="x", where="x", source="test", head=head)
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = getattr(transformers, AUTO_HEADS[head]).from_config(hf_config)
    assert type(model).__name__ == spec.head_class
    assert [(t.name, t.shape) for t in spec.parameter_tensors()] == [
        (n, tuple(p.shape)) for n, p in model.named_parameters()
    ]


@pytest.mark.parametrize(("family", "head"), CASES)
def test_a_real_cpu_step_with_the_head_is_predicted(family, head):
    from memprof.validate import Case, run_case

    result = run_case(Case(family, "adamw", "32-true", "eager", "none", head=head))
    assert result["status"] == "pass", result
    assert result["inferred_mismatch"] == {}, result["inferred_mismatch"]
