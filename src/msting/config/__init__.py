"""msting configuration: where files live (``paths``) and what the config says (``schema``).

Importing this package is cheap: ``yaml`` is imported only when a config is parsed.
"""

from msting.config.paths import Paths, resolve_paths
from msting.config.schema import (
    Config,
    ConfigError,
    ConfigProblem,
    LLMConfig,
    LoggingConfig,
    RestartPolicy,
    ServiceConfig,
    default_config_text,
    load_config,
    parse_config,
    write_user_config,
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
