"""From the branches in the files to the per-event values the features are made of.

On every partition, in this order: derived branches (``[derived]``), the object
selection of each collection (``[selection.objects]``), the ordering of each
collection (``features.collections.<name>.sort_by``), the event selection
(``[selection] events``), and the label and weight of every kept event.

Everything is decided here, on the client, from the first file's branch types
and the config, before any data is read: the type of every expression (one
value per event or one per object, and of which collection), and the exact set
of branches the run needs, which are the only ones read.

A collection is the set of jagged branches that share a counter branch
(``Jet_pt``, ``Jet_eta`` with ``nJet``), named by their common prefix (``Jet``);
a jagged branch without a counter is a collection of its own. An object
selection and an ordering apply to every branch of the collection alike, and
the collection's counter branch then counts the selected objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import glob
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import uproot

from .config import Config, SampleConfig
from .errors import HepdaskError
from .expressions import Expression, Kind, parse

__all__ = ["Branch", "Events", "Preprocess", "build_preprocess", "describe_tree"]

RAW, SELECTED, FINAL = 0, 1, 2  # stages of a jagged value: as read, selected, selected + ordered


@dataclass(frozen=True)
class Branch:
    """A numeric branch of the tree, or a derived one."""

    name: str
    dtype: str  # numpy dtype of the values (of the elements, when jagged)
    jagged: bool
    collection: str  # jagged: the collection (e.g. "Jet"); flat: the branch's own name
    expression: str | None = None  # derived branches: their definition

    @property
    def kind(self) -> Kind:
        return Kind(self.jagged, self.collection if self.jagged else None, self.dtype == "bool")


@dataclass
class Events:
    """One partition after preprocessing: the feature branches of the kept events, and more."""

    values: dict[str, Any]  # feature branch -> ak.Array (flat or jagged) of the kept events
    label: np.ndarray  # int64 class per kept event
    weight: np.ndarray  # float64
    entry: np.ndarray  # int64 entry number in the file, for the split
    read: int  # events read, before the event selection
    error: str | None = None  # why the partition could not be read (data.on_read_error = "skip")

    def __len__(self) -> int:
        return len(self.entry)


def describe_tree(ttree) -> tuple[dict[str, Branch], dict[str, str], dict[str, str]]:
    """The numeric branches of ``ttree`` (a TTree or an RNTuple) with their collections, the
    others, and the counters.

    Returns (numeric branches by name, non-numeric branch -> its type name,
    counter branch -> the collection it counts).

    A split object (a struct, a ``std::vector`` of structs) keeps its values in sub-branches,
    named here by their full path, as uproot does (``Info/pfMET``, ``Lep/Lep.pt``); the
    jagged sub-branches of one object form a collection named after it (``Lep``). An RNTuple's
    top-level fields of numbers, or of lists of numbers, are read like branches.
    """
    jagged: dict[str, list[str]] = {}  # counter (or the branch itself) -> jagged branches
    numeric: dict[str, tuple[str, bool, str]] = {}
    other: dict[str, str] = {}
    leaves = _rntuple_fields(ttree) if isinstance(ttree, uproot.behaviors.RNTuple.RNTuple) \
        else _tree_leaves(ttree)
    for path, kind in leaves:
        if isinstance(kind, str):
            other[path] = kind
            continue
        numeric[path] = kind
        if kind[1]:
            jagged.setdefault(kind[2], []).append(path)
    names = {counter: _collection_name(counter, members) for counter, members in jagged.items()}
    branches = {
        name: Branch(name, dtype, is_jagged, names[counter] if is_jagged else name)
        for name, (dtype, is_jagged, counter) in numeric.items()
    }
    counters = {c: names[c] for c in jagged if c in numeric and not numeric[c][1]}
    return branches, other, counters


def _tree_leaves(ttree) -> Iterator[tuple[str, tuple[str, bool, str] | str]]:
    """(path, (dtype, jagged, counter)) for each numeric leaf branch, (path, type name) for
    the others."""
    for path, tbranch in ttree.iteritems(recursive=True, full_paths=True):
        if tbranch.branches:
            subs = ", ".join(tbranch.keys(recursive=True, full_paths=True))
            yield path, f"{tbranch.typename}, split into the sub-branches {path}/{subs}"
            continue
        interp = tbranch.interpretation
        content = interp.content if isinstance(interp, uproot.AsJagged) else interp
        if not (isinstance(content, uproot.AsDtype) and content.to_dtype.kind in "biuf"
                and not content.to_dtype.shape):
            yield path, tbranch.typename
            continue
        is_jagged = isinstance(interp, uproot.AsJagged)
        if is_jagged and "/" in path:  # uproot gives a split vector's first member as counter
            counter = path.split("/", 1)[0]
        elif is_jagged and tbranch.count_branch is not None:
            counter = tbranch.count_branch.name
        else:
            counter = path
        yield path, (content.to_dtype.name, is_jagged, counter)


def _rntuple_fields(rntuple) -> Iterator[tuple[str, tuple[str, bool, str] | str]]:
    """Like :func:`_tree_leaves`, for the top-level fields of an RNTuple (from their types, read
    from zero entries). A field of lists has no counter: it counts itself."""
    form = rntuple.arrays(entry_stop=0).type.content
    for name, kind in zip(form.fields, form.contents, strict=True):
        jagged = isinstance(kind, ak.types.ListType)
        content = kind.content if jagged else kind
        if isinstance(content, ak.types.NumpyType) and np.dtype(content.primitive).kind in "biuf":
            yield name, (np.dtype(content.primitive).name, jagged, name)
        else:
            yield name, str(kind)


def _collection_name(counter: str, members: Sequence[str]) -> str:
    """``Jet`` for ``Jet_pt, Jet_eta``; the counter's name when the members share no prefix
    (and the split object's, for its sub-branches ``Lep/Lep.pt``, ``Lep/Lep.eta``)."""
    if "/" in members[0]:  # sub-branches: their counter is the split object
        return counter
    prefixes = {m.split("_", 1)[0] for m in members}
    return prefixes.pop() if len(prefixes) == 1 else counter


def field(name: str) -> str:
    """The field uproot reads a branch into: a sub-branch's own name, without its path."""
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Preprocess:
    """The whole per-event recipe of a run; :meth:`apply` runs it on one partition."""

    branches: dict[str, Branch]  # every numeric tree branch and every derived one
    features: tuple[str, ...]  # the branches that become features, in order
    derived: dict[str, Expression]  # in evaluation order
    objects: dict[str, Expression]  # collection -> object selection
    order: dict[str, tuple[Expression, bool]]  # collection -> (sort key, descending)
    cut: Expression | None
    labels: dict[str, int | Expression]  # sample -> class or expression
    weights: dict[str, Expression | None]  # sample -> weight expression
    counters: dict[str, str]  # counter branch -> collection
    notes: tuple[str, ...] = ()

    @property
    def feature_branches(self) -> list[Branch]:
        return [self.branches[n] for n in self.features]

    def columns(self, sample: str) -> list[str]:
        """The tree branches that ``sample`` needs: features, cuts, label, weight and their inputs."""
        return self._tree_branches([n for e in self._sample_expressions(sample) for n in e.names])

    def inputs(self) -> list[str]:
        """The tree branches that the features and the event selection are computed from: what
        a file or a request must hold to be scored."""
        return self._tree_branches([])

    def _tree_branches(self, extra: list[str]) -> list[str]:
        needed = self._needed(extra)[0]
        return [n for n in self.branches if n in needed]

    def _needed(self, extra: list[str]) -> tuple[set[str], set[str]]:
        """The tree branches that the features, the event selection and ``extra`` are computed
        from, and every name (tree or derived) met on the way."""
        wanted: set[str] = set()
        names = [*self.features, *extra, *(self.cut.names if self.cut is not None else ())]
        seen: set[tuple[str, int]] = set()
        for name in names:
            self._requires(name, FINAL, wanted, seen)
        return wanted, {name for name, _ in seen}

    def _sample_expressions(self, sample: str) -> list[Expression]:
        return [e for e in (self.labels[sample], self.weights[sample]) if isinstance(e, Expression)]

    def _requires(self, name: str, stage: int, out: set[str], seen: set[tuple[str, int]]) -> None:
        """Add the tree branches needed to compute ``name`` at ``stage`` (see :class:`_Values`)."""
        if (name, stage) in seen:
            return
        seen.add((name, stage))
        if name in self.derived:
            for n in self.derived[name].names:
                self._requires(n, stage, out, seen)
            return
        branch = self.branches[name]
        collection = self.counters.get(name, branch.collection if branch.jagged else None)
        if stage > RAW and collection in self.objects:
            for n in self.objects[collection].names:  # the selection sees the objects as read
                self._requires(n, RAW, out, seen)
            if name in self.counters:  # the count of the selected objects replaces the counter
                return
        out.add(name)
        if stage == FINAL and branch.jagged and collection in self.order:
            for n in self.order[collection][0].names:  # the sort key sees the selected objects
                self._requires(n, SELECTED, out, seen)

    def feature_values(self, events: ak.Array) -> tuple[dict[str, Any], np.ndarray]:
        """The feature branches of every event of ``events`` (a record array of tree branches),
        objects selected and ordered, and whether each event passes the event selection."""
        return self._features(_Values(self, events), len(events))

    def _features(self, values: _Values, n: int) -> tuple[dict[str, Any], np.ndarray]:
        keep = np.ones(n, dtype=bool)
        if self.cut is not None:
            keep = _flat(values.evaluate(self.cut, FINAL), n, fill=False).astype(bool)
        return {name: values.get(name, FINAL) for name in self.features}, keep

    def apply(self, events: ak.Array, sample: str, start: int) -> Events:
        """Run the recipe on the raw branches of one partition starting at entry ``start``."""
        values, n = _Values(self, events), len(events)
        features, keep = self._features(values, n)
        label = self.labels[sample]
        if isinstance(label, Expression):
            labels = _check_label(_flat(values.evaluate(label, FINAL), n)[keep], label, sample)
        else:
            labels = np.full(int(keep.sum()), label, dtype=np.int64)
        weight = self.weights[sample]
        weights = (_flat(values.evaluate(weight, FINAL), n)[keep] if weight is not None
                   else np.ones(int(keep.sum())))
        if not keep.all():
            features = {name: value[keep] for name, value in features.items()}
        return Events(features, labels, weights.astype(np.float64),
                      start + np.flatnonzero(keep).astype(np.int64), n)

    def describe(self) -> dict:
        """Everything the values depend on, as plain data (for fingerprints and the bundle)."""
        return {
            "features": list(self.features),
            "derived": {k: e.text for k, e in self.derived.items()},
            "objects": {k: e.text for k, e in self.objects.items()},
            "order": {k: [e.text, d] for k, (e, d) in self.order.items()},
            "cut": self.cut.text if self.cut is not None else None,
            "labels": {k: v.text if isinstance(v, Expression) else v for k, v in self.labels.items()},
            "weights": {k: v.text if v is not None else None for k, v in self.weights.items()},
        }

    def schema(self) -> dict:
        """The type of every tree branch the features and the event selection touch, the derived
        branches they use and the collections' counters: with :meth:`describe`, what
        :meth:`from_description` needs to rebuild the recipe without the files."""
        met = self._needed([])[1]
        return {
            "branches": {n: [b.dtype, b.jagged, b.collection] for n, b in self.branches.items()
                         if n in met and n not in self.derived},
            "derived": [n for n in self.derived if n in met],
            "counters": {c: name for c, name in self.counters.items() if c in met},
        }

    @classmethod
    def from_description(cls, description: Mapping[str, Any], schema: Mapping[str, Any]
                         ) -> Preprocess:
        """The recipe of a trained model (:meth:`describe` and :meth:`schema` as saved in its
        run directory), without labels and weights: it computes the features of new events."""
        branches = {name: Branch(name, dtype, jagged, collection)
                    for name, (dtype, jagged, collection) in schema["branches"].items()}
        derived = _derive({n: description["derived"][n] for n in schema["derived"]}, branches, {})
        known = list(branches)

        def expression(text: str, where: str) -> Expression:
            return parse(text, where=where, known=known)

        used = {b.collection for b in branches.values() if b.jagged} | set(schema["counters"].values())
        cut = description["cut"]
        return cls(
            branches, tuple(description["features"]), derived,
            {k: expression(t, f"selection.objects.{k}") for k, t in description["objects"].items()
             if k in used},
            {k: (expression(t, f"features.collections.{k}.sort_by"), bool(d))
             for k, (t, d) in description["order"].items() if k in used},
            expression(cut, "selection.events") if cut is not None else None,
            {}, {}, dict(schema["counters"]),
        )

    def __dask_tokenize__(self):
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()


class _Values:
    """Branch values of one partition at each stage, computed once and cached."""

    def __init__(self, prep: Preprocess, events: ak.Array):
        self.prep = prep
        self.events = events
        self.cache: dict[tuple[str, int], Any] = {}
        self.masks: dict[str, Any] = {}
        self.orders: dict[str, Any] = {}

    def evaluate(self, expression: Expression, stage: int):
        return expression.evaluate(lambda name: self.get(name, stage))

    def get(self, name: str, stage: int):
        key = (name, stage)
        if key not in self.cache:
            self.cache[key] = self._compute(name, stage)
        return self.cache[key]

    def _compute(self, name: str, stage: int):
        prep = self.prep
        if name in prep.derived:
            value = self.evaluate(prep.derived[name], stage)
            return value if isinstance(value, ak.Array | np.ndarray) else \
                np.full(len(self.events), value)
        branch = prep.branches[name]
        if stage > RAW and name in prep.counters and prep.counters[name] in prep.objects:
            return ak.sum(self.mask(prep.counters[name]), axis=1)
        value = self.events[field(name)]
        if branch.jagged and stage > RAW:
            if branch.collection in prep.objects:
                value = value[self.mask(branch.collection)]
            if stage == FINAL and branch.collection in prep.order:
                value = value[self.order(branch.collection)]
        return value

    def mask(self, collection: str):
        if collection not in self.masks:
            selected = self.evaluate(self.prep.objects[collection], RAW)
            self.masks[collection] = ak.fill_none(selected, False)
        return self.masks[collection]

    def order(self, collection: str):
        if collection not in self.orders:
            key, descending = self.prep.order[collection]
            values = self.evaluate(key, SELECTED)
            self.orders[collection] = ak.argsort(values, axis=1, ascending=not descending,
                                                 stable=True)
        return self.orders[collection]


def _flat(value, n: int, fill: float | bool = np.nan) -> np.ndarray:
    """One value per event as NumPy (a constant is broadcast; a missing value becomes ``fill``)."""
    if isinstance(value, ak.Array):
        return ak.to_numpy(ak.fill_none(value, fill))
    return value if isinstance(value, np.ndarray) else np.full(n, value)


def _check_label(values: np.ndarray, label: Expression, sample: str) -> np.ndarray:
    if values.dtype == bool:
        return values.astype(np.int64)
    with np.errstate(invalid="ignore"):
        labels = values.astype(np.int64)
        bad = ~np.isfinite(values.astype(np.float64)) | (labels != values) | (labels < 0)
    if bad.any():
        raise HepdaskError(
            f"Config key samples.{sample}.label: the expression {label.text!r} gives "
            f"{values[bad][0]!r} for some events; a label must be a class number 0, 1, 2, ... "
            "(a comparison such as \"genMatched == 1\" gives 0 or 1)."
        )
    return labels


def build_preprocess(config: Config, branches: Mapping[str, Branch], other: Mapping[str, str],
                     counters: Mapping[str, str], *, source: str) -> Preprocess:
    """Check every expression of ``config`` against the tree's branches and fix the features.

    ``branches``, ``other`` and ``counters`` are what :func:`describe_tree` found in ``source``.
    """
    branches = dict(branches)
    derived = _derive(config.derived, branches, other)
    kinds = {name: b.kind for name, b in branches.items()}
    known = list(branches)
    collections = {b.collection for b in branches.values() if b.jagged}

    def expression(text: str, where: str, *, want_jagged: bool, collection: str | None = None,
                   boolean: bool = False) -> Expression:
        expr = parse(text, where=where, known=known)
        kind = expr.infer(kinds)
        if want_jagged and (not kind.jagged or kind.collection != collection):
            got = f"objects of {kind.collection}" if kind.jagged else "one value per event"
            raise HepdaskError(
                f"Config key {where} is {text!r}, which gives {got}: it must give one value "
                f"per object of {collection} (e.g. \"{collection}_pt > 30\")."
            )
        if not want_jagged and kind.jagged:
            raise HepdaskError(
                f"Config key {where} is {text!r}, which gives one value per object of "
                f"{kind.collection}: it must give one value per event. Reduce over the objects "
                f"with any(...), all(...), count(...), sum(...), max(...) or min(...)."
            )
        if boolean and not kind.boolean:
            raise HepdaskError(
                f"Config key {where} is {text!r}, which is not a condition: write a comparison "
                "such as \"x > 30\", combined with and/or/not."
            )
        return expr

    def check_collection(name: str, key: str) -> None:
        if name not in collections:
            raise HepdaskError(
                f"Config key {key}.{name}: there is no collection {name!r} in {source}. Its "
                f"collections (jagged branches grouped by counter) are: "
                f"{', '.join(sorted(collections)) or 'none'}."
            )

    objects = {}
    for name, text in config.selection.objects.items():
        check_collection(name, "selection.objects")
        objects[name] = expression(text, f"selection.objects.{name}", want_jagged=True,
                                   collection=name, boolean=True)
    order = {}
    for name, collection in config.features.collections.items():
        check_collection(name, "features.collections")
        if collection.sort_by is not None:
            order[name] = (expression(collection.sort_by, f"features.collections.{name}.sort_by",
                                      want_jagged=True, collection=name), collection.descending)
    cut = None
    if config.selection.events is not None:
        cut = expression(config.selection.events, "selection.events", want_jagged=False,
                         boolean=True)
    labels: dict[str, int | Expression] = {}
    weights: dict[str, Expression | None] = {}
    for sample in config.samples:
        labels[sample.name] = sample.label if isinstance(sample.label, int) else expression(
            sample.label, f"samples.{sample.name}.label", want_jagged=False)
        weights[sample.name] = None if sample.weight is None else expression(
            sample.weight, f"samples.{sample.name}.weight", want_jagged=False)
    prep = Preprocess(branches, (), derived, objects, order, cut, labels, weights, dict(counters))
    features, notes = _select_features(config, prep, other, source)
    return dataclasses.replace(prep, features=tuple(features), notes=tuple(notes))


def _derive(definitions: Mapping[str, str], branches: dict[str, Branch],
            other: Mapping[str, str]) -> dict[str, Expression]:
    """Parse ``[derived]``, order it by dependencies and add the new branches to ``branches``."""
    known = [*branches, *definitions]
    parsed = {}
    for name, text in definitions.items():
        if name in branches or name in other:
            raise HepdaskError(
                f"Config key derived.{name}: the tree already has a branch {name!r}; give the "
                "derived branch another name."
            )
        parsed[name] = parse(text, where=f"derived.{name}", known=known)
    ordered: dict[str, Expression] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name):], name])
            raise HepdaskError(
                f"Config table [derived] defines branches in a circle ({cycle}); each may use "
                "only tree branches and derived branches that do not use it in turn."
            )
        visiting.append(name)
        for dep in parsed[name].names:
            if dep in parsed:
                visit(dep)
        visiting.pop()
        kind = parsed[name].infer({n: b.kind for n, b in branches.items()})
        branches[name] = Branch(name, "bool" if kind.boolean else "float64", kind.jagged,
                                kind.collection if kind.jagged else name, parsed[name].text)
        ordered[name] = parsed[name]

    for name in parsed:
        visit(name)
    return ordered


def _select_features(config: Config, prep: Preprocess, other: Mapping[str, str],
                     source: str) -> tuple[list[str], list[str]]:
    """Branches matching ``features.branches`` minus excluded, label/weight and counter branches."""
    patterns, exclude = config.features.branches, config.features.exclude
    names = [*prep.branches, *other]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise HepdaskError(missing_branch(pattern, names, source, "features.branches"))
    explicit = {p for p in patterns if not glob.has_magic(p)}
    leaks = _label_and_weight_inputs(config.samples, prep)
    selected, notes, hidden = [], [], {}
    for name in names:
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns) \
                or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if name in other:
            if name in explicit:
                raise HepdaskError(
                    f"The branch {name!r} in {source} holds {other[name]}, which is not numeric "
                    "and cannot be a feature: remove it from features.branches."
                )
            notes.append(f"Skipping branch {name!r} ({other[name]}): not numeric.")
        elif (why := _reveals(name, leaks, prep)) is not None:
            hidden.setdefault(why, []).append(name)
        else:
            selected.append(name)
    notes += [f"Not using {', '.join(map(repr, left))} as "
              f"{'features' if len(left) > 1 else 'a feature'}: {why}."
              for why, left in hidden.items()]
    jagged = {prep.branches[n].collection for n in selected if prep.branches[n].jagged}
    for counter, collection in prep.counters.items():
        spec = config.features.collections.get(collection)
        if counter in selected and collection in jagged and (spec is None or spec.multiplicity):
            selected.remove(counter)
            notes.append(f"Not using {counter!r} as a feature: the column {collection}.n counts "
                         f"the {collection} objects (after any object selection).")
    if not selected:
        raise HepdaskError(
            f"features.branches {list(patterns)} minus features.exclude {list(exclude)} leaves "
            f"no numeric branch in {source}.{''.join(f' {n}' for n in notes)}"
        )
    return selected, notes


def _label_and_weight_inputs(samples: Iterable[SampleConfig], prep: Preprocess) -> dict[str, str]:
    """Every name a label or weight is computed from (through derived branches), with the
    config key and expression that use it: what the features must not reveal."""
    out: dict[str, str] = {}
    for sample in samples:
        for key in ("label", "weight"):
            expression = getattr(prep, f"{key}s")[sample.name]
            if not isinstance(expression, Expression):
                continue
            todo = list(expression.names)
            while todo:
                name = todo.pop()
                if name not in out:
                    out[name] = f"samples.{sample.name}.{key} = {expression.text!r}"
                    todo += prep.derived[name].names if name in prep.derived else []
    return out


def _reveals(name: str, leaks: Mapping[str, str], prep: Preprocess) -> str | None:
    """Why the feature ``name`` would reveal a label or weight (see
    :func:`_label_and_weight_inputs`), or None.

    It does when a label or weight is computed from it, or from a collection it belongs to:
    counting or reading a collection's objects (``NMuon >= 2``, ``any(Jet_btag > 0.5)``) makes
    every column of the collection a leak, since its slots, count and mask columns all tell
    how many objects an event has. A derived branch reveals what it is computed from.
    """
    if name in leaks:
        return f"{leaks[name]} is computed from it"
    branch = prep.branches[name]
    if branch.jagged:
        for used, source in leaks.items():
            used_branch = prep.branches[used]
            of = prep.counters.get(used, used_branch.collection if used_branch.jagged else None)
            if of == branch.collection:
                return (f"{source} is computed from {used!r}, so the columns of the "
                        f"{branch.collection!r} collection (its objects, slots, count and mask) "
                        "would reveal it")
    for used in prep.derived[name].names if name in prep.derived else ():
        if (why := _reveals(used, leaks, prep)) is not None:
            return f"it is computed from {used!r}, and {why}"
    return None


def missing_branch(name: str, available: Sequence[str], path: str, key: str) -> str:
    """The message for a branch that is not in a file, with the closest names."""
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Closest: {', '.join(close)}." if close else ""
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    return (
        f"The branch {name!r} (config key {key}) is not in {path}.{hint} Available branches: "
        f"{shown}."
    )
