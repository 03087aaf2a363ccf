"""`Checkpointer`: async, atomic, keep-last-K checkpoints of any pytree of arrays plus JSON side items.

A thin wrapper over `orbax.checkpoint.CheckpointManager`. Step directory `<dir>/<step>/` holds the item `state`
(the array pytree, `StandardSave`), `meta` (a JSON dict naming the run / model) and one JSON item per extra
(e.g. `data` = grain iterator state, `rollout`, `metrics`). New-style `jax.random.key` arrays round-trip natively
in orbax 0.12.8 (stored as their uint32 key data). Orbax writes into `<step>.orbax-checkpoint-tmp` and renames
on success (on Cloud Storage, with no rename, it writes `<step>/` and a commit marker last), so a failed save never
touches finished steps and never shows up in `all_steps()`. What differs from
bare orbax: inputs are checked before anything is written (leaf types, JSON-ability, step already saved), and
`restore` refuses a checkpoint of another model (`meta`) or of another tree structure / shape, naming the culprit.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ringjax import storage

STATE, META = "state", "meta"
_LEAF_TYPES = (jax.Array, np.ndarray, np.generic, int, float)


def _json(name: str, value: Any) -> Any:
    """`value` as it will read back from JSON (tuples -> lists); ValueError naming `name` if it is not JSON."""
    if not isinstance(value, dict):
        raise ValueError(f"checkpoint item {name!r} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint item {name!r} is not JSON-serialisable: {e}") from e


def _key(path: tuple) -> tuple[str, ...]:
    """A tree path as strings, so paths from orbax metadata (dict keys) and from the live tree compare equal."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _saved_shape(leaf: Any) -> tuple[int, ...]:
    """The shape orbax stores for `leaf`; a PRNG key array is stored as its key data (one more axis)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)).shape)
    return tuple(leaf.shape)


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the finished checkpoints in `directory`, ascending; [] when the folder does not exist. Finished:
    a numeric subfolder (Orbax's temporary folders of unfinished saves are not numeric) which, on an object store
    (where Orbax cannot rename, `ringjax.storage`), holds the commit marker Orbax writes last."""
    names = storage.listdir(directory)
    steps = [int(d) for d in names if d.isdigit() and storage.is_dir(storage.join(directory, d))]
    if storage.is_url(directory):
        steps = [s for s in steps if ocp.path.step.is_path_finalized(storage.path(storage.join(directory, str(s))))]
    return sorted(steps)


class Checkpointer:
    """Saves every `every` steps into `directory`, keeps the newest `keep`; async unless `async_save=False`."""

    def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True, meta: dict):
        for field, value in (("every", every), ("keep", keep)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Checkpointer: {field} must be an int >= 1, got {value!r}")
        # Orbax takes absolute paths (or gs:// URLs) only: a relative one is relative to the current folder
        self.directory = storage.resolve(directory, "checkpoint folder")
        self.every, self.meta = every, _json(META, meta)
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
            registry.add(STATE, args, ocp.handlers.StandardCheckpointHandler)  # so item_metadata gives the tree
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # leftovers of a crashed save are removed on start
        )
        self._pending: int | None = None  # step of the save in flight
        self._failed: set[int] = set()  # steps whose save failed: their tmp folder may still be written to
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, step: int, state: Any, extras: dict[str, dict], force: bool = False) -> bool:
        """Start saving `state` + `meta` + `extras` at `step` if `should_save(step)` or `force`; True if started.

        With async saving this returns once arrays are copied to host; an error of the background write is
        raised by the next `save` / `wait`. Bad input (non-array leaf, non-JSON extra, step already saved)
        raises ValueError before anything is written.
        """
        if not (force or self.should_save(step)):
            return False
        for path, leaf in jax.tree_util.tree_leaves_with_path(state):
            if not isinstance(leaf, _LEAF_TYPES):
                raise ValueError(f"state leaf {jax.tree_util.keystr(path)} is a {type(leaf).__name__}, not an array")
        items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(self.meta)}
        for name, value in extras.items():
            if name in items or not name.isidentifier():
                raise ValueError(f"extra name {name!r} is reserved or not an identifier")
            items[name] = ocp.args.JsonSave(_json(name, value))
        self.wait()
        if step in self._failed:
            raise ValueError(f"checkpoint step {step} failed to save earlier and orbax may still be writing its "
                             f"temporary folder; save a later step")
        if step in self.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}; steps are never overwritten")
        self._pending = step
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        """Block until pending saves are on disk (and old steps pruned); re-raise a failed background write.

        Orbax drops the steps to prune from its list when a save starts but deletes them only after the new
        step is committed; on failure we re-read the directory so those steps are listed again.
        """
        try:
            self._manager.wait_until_finished()
        except Exception:
            if self._pending is not None:
                self._failed.add(self._pending)
            self._manager.reload()
            raise
        finally:
            self._pending = None

    def close(self) -> None:
        self._manager.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, dict], int]:
        """(state, extras, step) of `step` (default: the latest), arrays placed as `abstract_state` says.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with `.sharding` for a sharded restore).
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else step} in {self.directory}; available steps: {self.all_steps()}"
            )
        # The JSON items first, named by the step folder: Orbax then knows a handler for every item, and its
        # `item_metadata` (for the state's tree) does not warn about items it could not read.
        step_dir = storage.join(self.directory, str(step))
        names = [n for n in storage.listdir(step_dir) if n != STATE and storage.is_dir(storage.join(step_dir, n))]
        js = self._manager.restore(step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names}))
        item_meta = self._manager.item_metadata(step)
        saved_meta = js[META] if META in names else {}
        differ = sorted(k for k in self.meta if k not in saved_meta or saved_meta[k] != self.meta[k])
        if differ:
            raise ValueError(
                f"checkpoint from a different model: step {step} in {self.directory} differs in meta keys {differ}"
            )
        self._check_structure(item_meta[STATE].tree, abstract_state, step)
        state = self._manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
        )
        return state[STATE], {n: js[n] for n in names if n != META}, step

    def _check_structure(self, saved_tree: Any, abstract_state: Any, step: int) -> None:
        saved = {_key(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved_tree)}
        want = {
            _key(p): (jax.tree_util.keystr(p), _saved_shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)
        }
        for key, (name, shape) in want.items():
            if key not in saved:
                raise ValueError(f"checkpoint step {step} has no leaf {name}")
            if saved[key] != shape:
                raise ValueError(f"checkpoint step {step}: leaf {name} has shape {saved[key]}, expected {shape}")
        extra = sorted(set(saved) - set(want))
        if extra:
            raise ValueError(f"checkpoint step {step} has leaves missing from the abstract state: {extra[:5]}")
