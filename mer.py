"""The task's plumbing shared by the scripts: configuration overrides (more in later steps)."""
import ast
import os
import sys


def configure(config, argv=None):
    """nanoGPT-style configuration. `config` is a script's globals(), whose UPPERCASE constants are
    the defaults; each item of argv, in order, is a config file (plain Python assignments) or
    `--key=value` (key in any case, value parsed as a Python literal, else kept as a string).
    Unknown keys and values of the wrong type are errors, so a typo never runs silently."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise SystemExit(f"bad argument {arg!r}: write --{key}=VALUE")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            _set(config, key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise SystemExit(f"config file {arg!r} not found (arguments are a config file or --key=value)")
            values = {}
            exec(open(arg).read(), {}, values)
            for key, value in values.items():
                if not key.startswith("_"):
                    _set(config, key, value, arg)


def _set(config, key, value, where):
    name = key.upper()
    if name not in config or not name.isupper() or name.startswith("_"):
        known = ", ".join(k.lower() for k in config if k.isupper() and not k.startswith("_"))
        raise SystemExit(f"{where}: unknown setting {key!r}; known: {known}")
    default = config[name]
    if default is not None and value is not None and not isinstance(value, type(default)):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str):
            value = str(value)
        else:
            raise SystemExit(f"{where}: {key} must be a {type(default).__name__} like {default!r}, got {value!r}")
    config[name] = value
