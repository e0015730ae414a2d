"""memprof where training code already lives: training-framework callbacks and configs as input.

- `memprof.integrations.transformers.MemprofCallback`: a Hugging Face `TrainerCallback`;
- `memprof.integrations.lightning.MemprofCallback`: a PyTorch Lightning `Callback`;
- `memprof.integrations.configs.knobs_from_training_args`: a saved TrainingArguments JSON -> knobs;
- the pytest plugin is `memprof.pytest_plugin` (its `pytest11` entry point loads it).

Nothing is imported here: each module imports its framework, and raises an ImportError naming the
package to install when it is missing; `import memprof` imports none of them.
"""
