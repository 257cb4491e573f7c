"""Search spaces: YAML files turned into Optuna define-by-run functions.

The built-in spaces ship inside the package (``search_spaces/`` at the top of the repository, ``ray_xray/search_spaces/`` in the wheel: package data found
through ``importlib.resources``); folders named in ``$RAY_XRAY_SPACES`` (``os.pathsep``-separated)
are searched first, so your own spaces are usable by name too, and any YAML path works as well.

A space fixes some settings, tunes others and, when it searches over architectures, tunes
per-model hyperparameters only for the model a trial picked. Every key is a flat
:class:`~ray_xray.config.TrainConfig` field (``lr``) or a model hyperparameter (``model.dropout``);
``SearchSpace.resolve`` turns one sampled flat config into a ``TrainConfig``.
The file format is described in ``search_spaces/README.md``.

    space = load_space("vit", smoke=args.smoke_test)
    searcher = OptunaSearch(space=space.define_by_run, metric=..., mode=...)
    ...
    cfg = space.resolve(config)  # inside the trainable

Validation is strict and every failure is one ``SpaceError`` line naming the file and the key.
The modules, in the order a file goes through them:

- ``files``: where a name is found, reading the YAML
- ``schema``: the file's declared shape (pydantic models; keys and types)
- ``params``: each tuned setting as an Optuna distribution (its range rules)
- ``checks``: what the keys mean (TrainConfig fields, model hyperparameters, accepted values)
- ``pinning``: the ``smoke:`` block and ``--set``
- ``space``: ``SearchSpace`` and ``load_space``
- ``cli``: ``python -m ray_xray.spaces`` lists the spaces, ``... NAME [--smoke-test]`` prints
  one resolved, ``... --check [NAME]`` validates one or all
"""

from .cli import main
from .errors import SpaceError
from .files import SPACES_DIR, SPACES_ENV, list_spaces, space_dirs
from .params import Conditional, ParamSpec
from .space import SearchSpace, load_space

__all__ = [
    "SPACES_DIR",
    "SPACES_ENV",
    "Conditional",
    "ParamSpec",
    "SearchSpace",
    "SpaceError",
    "list_spaces",
    "load_space",
    "main",
    "space_dirs",
]
