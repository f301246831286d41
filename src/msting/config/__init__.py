"""msting configuration.

``paths`` (where files live), ``schema`` (config.yaml: the typed Config, validation,
loading), ``editor`` (writing the user's config.yaml, comments kept), ``profiles``
(the profile files); underneath, ``fields`` (the validation framework both schemas
use), ``errors`` (ConfigProblem, ConfigError) and ``yamlio`` (reading files and YAML).

Importing this package is cheap: ``yaml`` is imported only when a config is parsed.
"""

from msting.config.editor import write_user_config
from msting.config.errors import ConfigError, ConfigProblem
from msting.config.paths import Paths, resolve_paths
from msting.config.schema import (
    Config,
    LLMConfig,
    LoggingConfig,
    RestartPolicy,
    ServiceConfig,
    default_config_text,
    load_config,
    parse_config,
)

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "LLMConfig",
    "LoggingConfig",
    "Paths",
    "RestartPolicy",
    "ServiceConfig",
    "default_config_text",
    "load_config",
    "parse_config",
    "resolve_paths",
    "write_user_config",
]
