"""The read side of a sweep: where each trial stands, from its attempts in the ledger (one set of rules for the
reconciler, `status` and reports; the endings and their retry rules are `ablations.outcomes`), and `study_status`,
which reads a study back without changing anything."""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.config import EARLIER_IDENTITIES, IDENTITY_VERSION, Host, build_config
from ablations.datafiles import PACKAGED, MissingData, digest
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.paths import RESULTS, ledger_file, run_dir
from ablations.study.load import load_spec
from ablations.study.spec import NAME, StudySpec
from ablations.study.trials import Trial, plan_trials
from ablations.sweep.ledger import CONNECT_S, Attempt, Ledger, State, Ticket, check_storage, retrying
from ablations.sweep.slots import WAITING
from ablations.training.result import read_result
from ablations.urls import redact

LOSS_LIMIT = 3  # attempts of one trial lost or stalled before it is failed (it kills or hangs its hosts)


@dataclass(frozen=True)
class TrialStatus:
    """Where one trial stands.

    Attributes:
        state: done / running / failed / pending (queued or not yet queued).
        outcome: finished / diverged for a done trial.
        attempts: attempts made so far (counting the running one).
        failures: failed attempts that count toward the retries.
        reason: the last failure's class and reason.
        known: the ledger has an attempt for it.
        earlier: the key of its result under an earlier identity version, when it has no attempt of its own (that
            result is shown as such, never counted as this trial's).
        where: a running trial's host and epoch, and its Slurm job when it runs in one.
        run_id: the MLflow run of its result (done), else of its latest attempt that made one.
        summary: a done trial's summary metrics as its worker recorded them in the ledger (test / final
            validation errors, cost, speed); empty when the ledger holds none (a ledger imported from 0.2).
        duration_s: the wall time of its attempts, claim to end (queue waits left out); None before one ended.
    """

    trial: Trial
    state: Standing
    outcome: Ending | None = None
    attempts: int = 0
    failures: int = 0
    reason: str = ""
    known: bool = False
    earlier: str = ""
    where: str = ""  # a running trial's host, and its Slurm job when it runs in one
    run_id: str | None = None
    summary: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None


def by_key(attempts: Iterable[Attempt]) -> dict[str, list[Attempt]]:
    out: dict[str, list[Attempt]] = {}
    for a in attempts:
        out.setdefault(a.key, []).append(a)
    return out


def classify_attempts(attempts: list[Attempt], max_retries: int) -> Standing:
    """done / running / failed / pending, from one trial's attempts (oldest first) and the retry budget."""
    states = {a.state for a in attempts}
    if State.COMPLETE in states:
        return Standing.DONE
    if State.RUNNING in states:
        return Standing.RUNNING
    if State.WAITING in states:
        return Standing.PENDING
    kinds = [a.kind for a in attempts if a.state == State.FAIL and a.kind is not None]
    if any(k.final for k in kinds) or sum(k.uses_retry for k in kinds) > max_retries:
        return Standing.FAILED
    if sum(k.host_loss for k in kinds) >= LOSS_LIMIT:
        return Standing.FAILED
    return Standing.PENDING


def classify(trial: Trial, attempts: list[Attempt], max_retries: int) -> TrialStatus:
    """The trial's status from its attempts (oldest first) and the retry budget."""
    failed = [a for a in attempts if a.state == State.FAIL]
    last = failed[-1] if failed else None
    done = next((a for a in attempts if a.state == State.COMPLETE), None)
    running = next((a for a in attempts if a.state == State.RUNNING and a.owner is not None), None)
    where = ""
    if running is not None and running.owner is not None:
        job = f", Slurm job {running.owner.job}" if running.owner.job else ""
        where = f"on {running.owner.host}{job}, epoch {running.epoch}"
    ran = [a.ended_at - a.claimed_at for a in attempts if a.claimed_at is not None and a.ended_at is not None]
    made = [a.run_id for a in attempts if a.run_id]
    return TrialStatus(
        trial,
        classify_attempts(attempts, max_retries),
        outcome=(done.outcome or Ending.FINISHED) if done else None,
        attempts=len(attempts),
        failures=sum(a.kind is not None and a.kind.uses_retry for a in failed),
        reason=f"{last.kind}: {last.reason}" if last else "",
        known=bool(attempts),
        where=where,
        run_id=done.run_id if done is not None and done.run_id else made[-1] if made else None,
        summary=dict((done.result or {}).get("summary") or {}) if done is not None else {},
        duration_s=math.fsum(ran) if ran else None,
    )


def ticket_of(trial: Trial) -> Ticket:
    """The ticket of a trial's first attempt."""
    return Ticket(
        key=trial.key,
        config=trial.config.model_dump(mode="json"),
        config_hash=trial.config_hash,
        seed=trial.seed,
        label=trial.label,
        factors=trial.factors,
        studies=list(trial.studies),
        data_files=digest(trial.config.data) if trial.config.data.dataset in PACKAGED else None,
    )


def statuses(trials: list[Trial], attempts: list[Attempt], max_retries: int) -> list[TrialStatus]:
    """Where each trial stands; one with no attempt of its own but a result under an earlier key (among `attempts`)
    is pending, and says so."""
    grouped = by_key(attempts)
    return [earlier_result(t, grouped) or classify(t, grouped.get(t.key, []), max_retries) for t in trials]


def earlier_result(trial: Trial, grouped: dict[str, list[Attempt]]) -> TrialStatus | None:
    """A pending status naming the trial's result under an earlier identity, if it has one and no attempt of its
    own (the sweep trains it under the current identity)."""
    if grouped.get(trial.key):
        return None
    for version, key in sorted(trial.earlier.items(), reverse=True):
        if any(a.state == State.COMPLETE for a in grouped.get(key, [])):
            why = (f"a result under identity version {version} ({EARLIER_IDENTITIES[version]}), key {key}; "
                   f"`sweep` trains it under version {IDENTITY_VERSION}")  # fmt: skip
            return TrialStatus(trial, Standing.PENDING, reason=why, earlier=key)
    return None


def all_keys(trials: Iterable[Trial]) -> set[str]:
    """The trials' keys under the current identity and the earlier ones."""
    return {k for t in trials for k in (t.key, *t.earlier.values())}


def counts(found: Iterable[TrialStatus]) -> Counter[Standing]:
    return Counter(s.state for s in found)


def summary_line(found: Iterable[TrialStatus]) -> str:
    return counts_line(counts(found))


def counts_line(c: Counter[Standing]) -> str:
    return ", ".join(f"{c.get(k, 0)} {k}" for k in Standing)


SHOWN = (("test_top1_err", "test top-1"), ("final_val_top1_err", "val top-1"))  # the summary metrics `status` shows


def describe(found: list[TrialStatus], results: Path | None = None) -> str:
    """What `status` prints: the counts, then a line per trial with its outcome or its last failure; a done trial
    with its test and final validation top-1 error, its wall time and its MLflow run (the id `knockout --run` and
    `excitation` take). With `results`, a summary the ledger lacks is read from the trial's `result.json`."""
    lines = [summary_line(found)]
    for s in found:
        extra = s.outcome if s.state == Standing.DONE else s.where if s.state == Standing.RUNNING else s.reason
        parts = [str(extra or "")] if extra else []
        if s.state == Standing.RUNNING and results is not None:
            parts += waiting(run_dir(results, s.trial.key))
        summary = summary_of(s, results) if s.state == Standing.DONE else {}
        parts += [f"{name} {summary[k]:.2f} %" for k, name in SHOWN if _finite(summary.get(k))]
        if s.duration_s is not None and s.state != Standing.PENDING:
            parts.append(seconds_text(s.duration_s))
        if s.run_id:
            parts.append(f"run {s.run_id}")
        lines.append(f"  {s.state:8s} {s.trial.label} seed {s.trial.seed} [{s.trial.key}] {' · '.join(parts)}".rstrip())
    return "\n".join(lines)


def waiting(folder: Path) -> list[str]:
    """What a claimed trial waits for before it can train (a group trial's GPUs, `slots.hold_group`), if anything."""
    try:
        return [(folder / WAITING).read_text().strip()]
    except OSError:
        return []


def summary_of(status: TrialStatus, results: Path | None) -> dict[str, float]:
    """A done trial's summary metrics: the ledger's, else its `result.json` under `results` (an attempt the ledger
    holds no result of: a ledger imported from senet-ablate 0.2); empty when neither has them."""
    if status.summary or results is None or status.state != Standing.DONE:
        return status.summary
    found = read_result(run_dir(results, status.trial.key))
    return dict(found.summary) if found is not None else {}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def seconds_text(s: float) -> str:
    """A duration as people read it: 42 s, 12 min 05 s, 3 h 02 min."""
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def ledger_url(storage: str | None, results: Path) -> str:
    """The ledger's URL: `storage` (`--storage`), else the SQLite file in the results folder."""
    return storage or str(ledger_file(results))


@dataclass(frozen=True)
class ReadOptions:
    """Where a sweep is read back from (`status`, `report`, `excitation`) and how its trials were spelled."""

    results: Path = RESULTS
    storage: str | None = None  # ledger URL; default: the SQLite file under results
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite in results
    overrides: dict[str, Any] | None = None  # the sweep's `--set` values (they change its trials); None = as recorded
    device: str | None = None  # what `auto` resolved to in the sweep; None = as the ledger recorded it
    max_retries: int = 1  # failed attempts a trial may have before it counts as failed

    @property
    def storage_url(self) -> str:
        return ledger_url(self.storage, self.results)


def study_status(spec: StudySpec, opts: ReadOptions) -> tuple[list[Trial], list[TrialStatus]]:
    """A study's trials and where each stands, read from the ledger without changing it: the read side of
    `status`, `report` and `excitation`.

    `auto` settings resolve as the study's last sweep resolved them and its `--set` values are the ones it was run
    with (both recorded in the ledger), unless `opts` says otherwise; with no ledger yet, for this host. A trial
    whose only result was made under an earlier identity version is pending and names that result (`earlier`).
    """
    url = opts.storage_url
    check_storage(url)
    if not Ledger.exists(url):
        trials = plan_trials(spec, opts.overrides or {}, Host(opts.device) if opts.device else Host.here())  # type: ignore[arg-type]
        return trials, statuses(trials, [], opts.max_retries)
    try:
        ledger = Ledger.open(url, patience=CONNECT_S)
    except OSError as err:  # the ledger on a read-only folder (reading must not need to write): one clear line
        raise SenetError(f"--storage: cannot open the ledger {url} for reading ({err.strerror or err})") from None
    note = ledger.note(spec.name)
    device = opts.device or note.get("device")
    overrides = opts.overrides if opts.overrides is not None else note.get("overrides", {})
    attempts = ledger.attempts()
    try:
        trials = plan_trials(spec, overrides, Host(device) if device else Host.here())
    except MissingData as missing:  # the keys hold the data's digest: read the trials the sweep recorded
        if opts.overrides is not None or not note.get("keys"):
            raise
        trials = recorded_trials(note["keys"], attempts)
        print(f"{spec.name}: this host lacks the data files ({missing.data.dataset}); its trials are read from the "
              "ledger as its last sweep recorded them", file=sys.stderr)  # fmt: skip
    keys = all_keys(trials)
    return trials, statuses(trials, [a for a in attempts if a.key in keys], opts.max_retries)


def recorded_trials(keys: list[str], attempts: list[Attempt]) -> list[Trial]:
    """The trials of `keys` (a sweep's, in its order) rebuilt from their attempts' tickets, on a host that cannot
    compute their keys (the data files they hold the digest of are elsewhere). Their earlier-identity keys are not
    known here."""
    tickets = {a.key: a.ticket for a in attempts}
    trials = []
    for key in keys:
        t = tickets.get(key)
        if t is None:  # every trial of a sweep is queued when it starts
            raise SenetError(f"ledger: trial {key} of the last sweep has no attempt; run `sweep` where the data are")
        labels = (t.label,) * len(t.studies)
        trials.append(Trial(build_config(t.config), t.seed, t.config_hash, t.key, t.factors, t.label, t.studies[0],
                            tuple(t.studies), labels))  # fmt: skip
    return trials


def find_spec(ref: str, storage_url: str) -> StudySpec:
    """A shipped study, a spec file, or a study first run from a file, found again by its name in the ledger (the
    sweep recorded where its file was)."""
    try:
        return load_spec(ref)
    except SenetError:
        if not NAME.fullmatch(ref) or not Ledger.exists(storage_url):
            raise
        path = Ledger.open(storage_url, patience=CONNECT_S).note(ref).get("spec")
        if not path:
            raise
        return load_spec(path)


# -- the studies of a results folder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRecord:
    """A study as a ledger records it: the trials of its last sweep and where each stands.

    Attributes:
        name: the study's name (a study run from a file is found again by it).
        standing: trial key → done / running / failed / pending, for its last sweep's trials in the sweep's order
            (a ledger of 0.2: the trials its attempts were for).
        updated: when its last sweep started (database clock, seconds since 1970; None for an imported study).
    """

    name: str
    standing: dict[str, Standing]
    updated: float | None = None

    @property
    def counts(self) -> Counter[Standing]:
        return Counter(self.standing.values())

    def line(self) -> str:
        return f"{len(self.standing)} trials: {counts_line(self.counts)}"


def _named(ledger: Ledger) -> dict[str, float | None]:
    """Every study the ledger names (its notes and its trial records), with the time of its note."""
    import sqlalchemy as sa

    from ablations.sweep import _ledger_db as db

    def read() -> dict[str, float | None]:
        with ledger.engine.connect() as conn:
            found: dict[str, float | None] = {s: None for (s,) in conn.execute(sa.select(db.study_trials.c.study))}
            return found | dict(conn.execute(sa.select(db.notes.c.study, db.notes.c.updated)).all())  # type: ignore[arg-type]

    return retrying(read, ledger.where, CONNECT_S)


def recorded_studies(storage_url: str, max_retries: int = 1) -> list[StudyRecord]:
    """The studies a ledger holds, by name, with their trials' standing: `senet-ablate status` without a study.

    Raises:
        SenetError: no ledger at `storage_url` (a local file that does not exist), or one that cannot be opened.
    """
    check_storage(storage_url)
    if not Ledger.exists(storage_url):
        raise SenetError(f"--results: no sweep ledger at {redact(storage_url)}; give the --results folder (or "
                         "--storage) a sweep ran with")  # fmt: skip
    ledger = Ledger.open(storage_url, patience=CONNECT_S)
    attempts = ledger.attempts()
    grouped = by_key(attempts)
    named = _named(ledger)
    for a in attempts:  # a ledger imported from 0.2 names its studies in the tickets only
        for study in a.ticket.studies:
            named.setdefault(study, None)
    out = []
    for name in sorted(n for n in named if "#" not in n):  # `<study>#slurm` notes are a study's Slurm jobs
        keys = list(ledger.note(name).get("keys") or [r.key for r in ledger.trials(name)])
        keys = keys or list(dict.fromkeys(a.key for a in attempts if name in a.ticket.studies))
        standing = {k: classify_attempts(grouped.get(k, []), max_retries) for k in keys}
        out.append(StudyRecord(name, standing, named[name]))
    return out


def unknown_study(name: str, storage_url: str, records: list[StudyRecord]) -> SenetError:
    """The one line for a study a results folder holds no trial of, naming the ones it does hold."""
    there = ", ".join(r.name for r in records) or "none"
    return SenetError(f"study: {name!r} has no trials in {redact(storage_url)}; the studies there: {there} (see "
                      "`senet-ablate status --results DIR`)")  # fmt: skip
