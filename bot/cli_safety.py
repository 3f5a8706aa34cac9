"""Operator and developer commands for the risk screen's learned layer: freeze the split, train, evaluate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the learned layer's modules load numpy and onnxruntime: only when a command runs
    from dialogs.safety.classifier import LearnedLayer
    from dialogs.safety.corpus import Example
    from dialogs.safety.evaluation import Report

safety_app = typer.Typer(no_args_is_help=True, help="The risk screen's learned layer: split, train, evaluate.")


def register(app: typer.Typer) -> None:
    app.add_typer(safety_app, name="safety")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


@safety_app.command("split")
def split_command() -> None:
    """Give every corpus message not yet in the frozen split a part (never moves a recorded one)."""
    from dialogs.safety import corpus

    examples = corpus.load()
    recorded = corpus.read_split()
    extended = corpus.extend_split(examples, recorded)
    corpus.write_split(extended)
    train, evaluation = corpus.parts(examples, extended)
    added = len(extended) - len(recorded)
    typer.echo(f"{len(examples)} messages: {len(train)} training, {len(evaluation)} evaluation ({added} new)")


def _parts() -> tuple[list[Example], list[Example]]:
    from dialogs.safety import corpus

    examples = corpus.load()
    split = corpus.read_split()
    missing = [e for e in examples if e.sha256 not in split]
    if missing:
        raise _fail(f"{len(missing)} corpus messages are not in the frozen split: run `companion safety split` first")
    return corpus.parts(examples, split)


@safety_app.command("train")
def train_command(
    output: Annotated[Path | None, typer.Option(help="where to write the head (default: the packaged one)")] = None,
) -> None:
    """Train the classifier head on the training part; thresholds from its 5-fold cross-validation."""
    from rich.console import Console

    from dialogs.safety import classifier, embedding, evaluation, lexicon, training

    console = Console(width=None if Console().is_terminal else 110)
    train, _ = _parts()
    model = embedding.MiniLM(threads=2)
    texts = [e.text for e in train]
    with _progress("embedding the training part", len(texts)) as advance:
        units = classifier.embed_units(model, texts, advance)
    console.print(f"cross-validating on {len(train)} messages ({training.FOLDS} folds)...")
    oof = training.out_of_fold(train, units)
    patterns = evaluation.scope_patterns()
    thresholds, record = training.choose_thresholds(
        train, oof, [lexicon.assess(t) for t in texts], [patterns(t) for t in texts]
    )
    head = training.fit_head(train, units, thresholds)
    cv = evaluation.from_scores("cross-validation (training part)", train, oof, thresholds)
    meta = {
        "about": "The learned risk layer's head (dialogs/safety/classifier.py), written by `companion safety train`.",
        "model": embedding.MODEL_ID,
        "model_sha256": embedding.MODEL_SHA256,
        "corpus_sha256": training.corpus_sha256(train),
        "trained": training.stamp(),
        "training": training.settings(len(train)),
        "metrics": {
            "thresholds_chosen_on": record,
            "cross_validation": {k: round(v, 4) for k, v in cv.summary.items()},
        },
    }
    head = classifier.Head(**{**vars(head), "meta": meta})
    path = output or classifier.HEAD_PATH
    path.write_text(json.dumps(head.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
    console.print(f"thresholds {vars(thresholds)}")
    evaluation.render(cv, console)
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


@safety_app.command("evaluate")
def evaluate_command(
    file: Annotated[
        list[Path] | None,
        typer.Option("--file", help="evaluate these corpus-format YAML files (or folders) instead of the frozen part"),
    ] = None,
    cv: Annotated[bool, typer.Option(help="also cross-validate on the training part (slower)")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Recall and false positives per level and category: the frozen evaluation part (and CV), or --file."""
    from rich.console import Console

    from dialogs.safety import classifier, corpus, evaluation, training

    console = Console(stderr=as_json, width=None if Console().is_terminal else 110)
    layer = classifier.load()
    reports = []
    if file:
        for path in file:
            if not path.exists():
                raise _fail(f"{path} does not exist")
        try:
            examples = corpus.load(file)
        except corpus.CorpusError as exc:
            raise _fail(str(exc)) from exc
        if not examples:
            raise _fail("no messages in " + ", ".join(map(str, file)))
        reports.append(_evaluate(", ".join(p.name for p in file), examples, layer))
    else:
        train, frozen = _parts()
        reports.append(_evaluate("frozen evaluation part", frozen, layer))
        if cv:
            with _progress("embedding the training part", len(train)) as advance:
                units = classifier.embed_units(layer.embedder, [e.text for e in train], advance)
            oof = training.out_of_fold(train, units)
            reports.append(evaluation.from_scores("cross-validation (training part)", train, oof, layer.thresholds))
    if as_json:
        typer.echo(json.dumps([evaluation.as_dict(r) for r in reports], indent=1))
    else:
        console.print(f"thresholds {vars(layer.thresholds)}")
        for rep in reports:
            evaluation.render(rep, console)
    missed = [f"{r.title}: {line}" for r in reports for line in r.failures()]
    for line in missed:
        console.print(f"[bold red]target missed[/] {line}")


def _evaluate(title: str, examples: Sequence[Example], layer: LearnedLayer) -> Report:
    from dialogs.safety import evaluation

    with _progress(f"screening {title}", len(examples)) as advance:
        return evaluation.evaluate(title, examples, layer, progress=advance)
