"""The public surface: `memprof.__all__` resolves, nothing shadows a module, `import memprof` needs no torch."""

import importlib
import subprocess
import sys
import types

import memprof


def test_every_public_name_resolves():
    for name in memprof.__all__:
        assert getattr(memprof, name) is not None, name
    assert set(memprof.__all__) >= {
        "estimate",
        "fit",
        "track",
        "profile",
        "compare",
        "Profile",
        "EstimateRecord",
        "ProfileRecord",
        "MemprofError",
        "MemprofUserError",
    }


def test_estimate_returns_the_record_downstream_code_reads():
    result = memprof.estimate("gpt2-124m", device="cpu")
    assert isinstance(result.record, memprof.EstimateRecord)
    assert result.to_dict() == result.record.to_dict()
    fit = memprof.fit("gpt2-124m", "a100-80gb")
    assert isinstance(fit.best, memprof.EstimateRecord) and fit.max_batch_size >= 1


def test_no_public_function_shadows_a_module():
    # GIVEN every module of the package
    import memprof.profiler

    for name in ("profile", "track"):
        value = getattr(memprof.profiler, name)
        # THEN the decorator / context manager are functions, and no submodule of that name exists
        assert callable(value) and not isinstance(value, types.ModuleType)
        assert importlib.util.find_spec(f"memprof.profiler.{name}") is None


def test_import_memprof_and_estimate_load_no_heavy_library():
    code = (
        "import sys, memprof; memprof.estimate('gpt2-1.5b'); "
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
