"""The one typed schema of every setting, and what is derived from it.

- `options`: the `Options` base class, `opt()` fields and the one error format.
- `groups`: option groups shared by several commands (decoding, few-shot prompting, precision).
- `run`: the run config `tunelab train` reads (model, data, train, method, objective).
- `files`: YAML in and out, `--set a.b=c` overrides.
- `flags`: command-line flags generated from the fields.
- `schemas`: the named schemas (run, eval, rag, serve, ...), JSON Schema, commented starting configs.

Other packages define their own options classes from the same base (eval tasks in
`eval/config.py`, retrieval in `rag/retrieve.py`, server limits in `serve/app.py`, each
method's and objective's `Config` in its own module).
"""

from tunelab.config.files import deep_merge, parse_overrides, read_yaml, to_dict, write_yaml
from tunelab.config.groups import DecodingConfig, FewShotConfig, Precision
from tunelab.config.options import Options, opt, validate
from tunelab.config.run import (
    DEFAULT_MODEL,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
    resolve,
    run_schema,
)

__all__ = ["DEFAULT_MODEL", "DataConfig", "DecodingConfig", "FewShotConfig", "ModelConfig", "Options", "Precision",
           "RunConfig", "TrainConfig", "deep_merge", "load_config", "opt", "parse_overrides", "read_yaml", "resolve",
           "run_schema", "to_dict", "validate", "write_yaml"]
