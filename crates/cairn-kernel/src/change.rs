//! Changes: persisted multi-step operations made of tasks with snapd-style statuses, and the
//! rules that move them. The runtime asks [`ChangeRecord::next_action`] what to run; every status
//! change is an event whose apply calls [`ChangeRecord::finish_task`] / [`ChangeRecord::start_task`]
//! / [`ChangeRecord::abort`], so replay reproduces the same statuses.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::event::HookSummary;
use crate::model::ResourceKind;

/// A task's status (snapd's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting to run.
    Do,
    /// Running (found at open: run again).
    Doing,
    /// Ran successfully.
    Done,
    /// Waiting to be undone.
    Undo,
    /// Being undone (found at open: undo again).
    Undoing,
    /// Undone.
    Undone,
    /// Failed (doing or undoing).
    Error,
    /// Will not run: an earlier task failed or the change was aborted.
    Hold,
}

impl TaskStatus {
    /// The status name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Do => "do",
            TaskStatus::Doing => "doing",
            TaskStatus::Done => "done",
            TaskStatus::Undo => "undo",
            TaskStatus::Undoing => "undoing",
            TaskStatus::Undone => "undone",
            TaskStatus::Error => "error",
            TaskStatus::Hold => "hold",
        }
    }

    /// Whether the task still has work ahead of it.
    pub fn is_pending(self) -> bool {
        match self {
            TaskStatus::Do | TaskStatus::Doing | TaskStatus::Undo | TaskStatus::Undoing => true,
            TaskStatus::Done | TaskStatus::Undone | TaskStatus::Error | TaskStatus::Hold => false,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change's overall status, derived from its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    /// Tasks are running forwards.
    Doing,
    /// Tasks are being undone.
    Undoing,
    /// Every task is done.
    Done,
    /// Undone after an abort, with no failures.
    Undone,
    /// A task failed (the change was undone as far as it went).
    Error,
}

impl ChangeStatus {
    /// The status name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Doing => "doing",
            ChangeStatus::Undoing => "undoing",
            ChangeStatus::Done => "done",
            ChangeStatus::Undone => "undone",
            ChangeStatus::Error => "error",
        }
    }

    /// Whether the change has finished (no task has work ahead).
    pub fn is_ready(self) -> bool {
        match self {
            ChangeStatus::Doing | ChangeStatus::Undoing => false,
            ChangeStatus::Done | ChangeStatus::Undone | ChangeStatus::Error => true,
        }
    }
}

impl fmt::Display for ChangeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of operation a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Package install.
    Install,
    /// Package uninstall.
    Uninstall,
    /// Interface connect.
    Connect,
    /// Interface disconnect.
    Disconnect,
}

impl ChangeKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Install => "install",
            ChangeKind::Uninstall => "uninstall",
            ChangeKind::Connect => "connect",
            ChangeKind::Disconnect => "disconnect",
        }
    }
}

/// A plug or slot: `(package, name)`.
pub type End = (String, String);

/// What a task does (or undoes). Hooks run in the runtime; every other step is performed by the
/// kernel in the same commit that marks the task finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Run `package`'s hook `hook` if the package declares it (otherwise a no-op).
    Hook {
        /// Whose hook.
        package: String,
        /// Hook name, e.g. `connect-plug-net`.
        hook: String,
        /// The plug involved, for `CAIRN_PLUG`.
        plug: Option<End>,
        /// The slot involved, for `CAIRN_SLOT`.
        slot: Option<End>,
    },
    /// Create the connection record.
    Establish {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Interface.
        interface: String,
        /// Made by auto-connect.
        auto: bool,
        /// Whether the pair is marked undesired afterwards (decided with the change, so an
        /// undo restores the mark exactly as it was).
        undesired: bool,
    },
    /// Remove the connection record.
    RemoveConnection {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Whether the pair is marked undesired (never auto-connected again) afterwards.
        undesired: bool,
    },
    /// Mark the package installed (end of install).
    MarkInstalled {
        /// The package.
        package: String,
    },
    /// Undo of an install's first step: the package stays, marked broken.
    MarkBroken {
        /// The package.
        package: String,
    },
    /// Mark the package uninstalling (done when the uninstall change is created).
    MarkUninstalling {
        /// The package.
        package: String,
        /// Kept resource kinds.
        keep: Vec<ResourceKind>,
    },
    /// Undo of `MarkUninstalling`: the package returns to the status it had.
    RestoreStatus {
        /// The package.
        package: String,
        /// The status to restore.
        status: crate::records::PackageStatus,
    },
    /// Cancel the package's running `onload` and record it.
    CancelOnload {
        /// The package.
        package: String,
    },
    /// Delete every owned resource whose kind is not kept, and every declared feature.
    DeleteResources {
        /// The package.
        package: String,
        /// Kept kinds.
        keep: Vec<ResourceKind>,
    },
    /// Remove the package record.
    RemovePackage {
        /// The package.
        package: String,
    },
    /// Nothing to do (undo of a step that needs none).
    Nothing,
    /// Stop the package's daemons (the runtime: SIGTERM, a grace, SIGKILL to each group) and
    /// record them stopped. Last, so that the encoding of every earlier step stays the same.
    StopDaemons {
        /// The package.
        package: String,
    },
}

impl Step {
    /// Whether the runtime must run something outside the kernel for this step.
    pub fn is_hook(&self) -> bool {
        matches!(self, Step::Hook { .. })
    }
}

/// One task of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Display name, e.g. `prepare-plug-net` or `delete-resources`.
    pub name: String,
    /// What doing it means.
    pub step: Step,
    /// What undoing it means.
    pub undo: Step,
    /// Its status.
    pub status: TaskStatus,
    /// A failure does not fail the change (recorded, then the change goes on).
    pub ignore_error: bool,
    /// Once done, the change can no longer be aborted or undone past this task.
    pub irreversible: bool,
    /// Hook runs so far (do and undo).
    pub attempts: u32,
    /// Notes: hook runs, failures, ignored errors, cancellations (facts; rendered when read).
    pub log: Vec<TaskNote>,
}

/// A note on a task: something that happened to it, as the events said. Rendered when read
/// (`Display`, e.g. `hook connect-plug-net attempt 2: exit 3 after 12 ms`); in human-readable
/// encodings (the API's JSON) it serializes as that rendered text, in the projection as the
/// typed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskNote {
    /// One of its hook runs ended (`hook.finished.v1`).
    HookFinished {
        /// Hook name.
        hook: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// How it ended.
        result: HookSummary,
    },
    /// One of its hook runs was cancelled (`hook.cancelled.v1`).
    HookCancelled {
        /// Hook name.
        hook: String,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// It failed, and the change unwinds.
    Failed {
        /// Why, as the event says.
        why: String,
    },
    /// It failed, and the failure does not fail the change (`ignore_error`).
    IgnoredError {
        /// Why, as the event says.
        why: String,
    },
    /// It was cancelled by an abort.
    Cancelled,
    /// Undoing it failed.
    UndoFailed {
        /// Why, as the event says.
        why: String,
    },
    /// Undoing it was cancelled.
    UndoCancelled,
    /// A note an event stated in words: a change in a `*.v1` event carries its tasks' notes
    /// as text.
    Stated {
        /// The event's words.
        text: String,
    },
}

impl fmt::Display for TaskNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskNote::HookFinished {
                hook,
                attempt,
                result,
            } => write!(f, "hook {hook} attempt {attempt}: {result}"),
            TaskNote::HookCancelled { hook, attempt } => {
                write!(f, "hook {hook} attempt {attempt}: cancelled")
            }
            TaskNote::Failed { why } => write!(f, "failed: {why}"),
            TaskNote::IgnoredError { why } => write!(f, "ignored error: {why}"),
            TaskNote::Cancelled => f.write_str("cancelled"),
            TaskNote::UndoFailed { why } => write!(f, "undo failed: {why}"),
            TaskNote::UndoCancelled => f.write_str("undo cancelled"),
            TaskNote::Stated { text } => f.write_str(text),
        }
    }
}

/// The projection's layout of [`TaskNote`] (serde's derive, through `remote`).
#[derive(Serialize, Deserialize)]
#[serde(remote = "TaskNote")]
enum TaskNoteLayout {
    HookFinished {
        hook: String,
        attempt: u32,
        result: HookSummary,
    },
    HookCancelled {
        hook: String,
        attempt: u32,
    },
    Failed {
        why: String,
    },
    IgnoredError {
        why: String,
    },
    Cancelled,
    UndoFailed {
        why: String,
    },
    UndoCancelled,
    Stated {
        text: String,
    },
}

impl Serialize for TaskNote {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            TaskNoteLayout::serialize(self, s)
        }
    }
}

impl<'de> Deserialize<'de> for TaskNote {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TaskNoteLayout::deserialize(d)
    }
}

impl Task {
    /// A pending task.
    pub fn new(name: impl Into<String>, step: Step, undo: Step) -> Self {
        Self {
            name: name.into(),
            step,
            undo,
            status: TaskStatus::Do,
            ignore_error: false,
            irreversible: false,
            attempts: 0,
            log: Vec::new(),
        }
    }

    /// Marks failures as not failing the change.
    pub fn ignoring_errors(mut self) -> Self {
        self.ignore_error = true;
        self
    }

    /// Marks the task as a point of no return.
    pub fn irreversible(mut self) -> Self {
        self.irreversible = true;
        self
    }

    /// A task already done when the change is created (its effect is in the creating commit).
    pub fn done(mut self) -> Self {
        self.status = TaskStatus::Done;
        self
    }
}

/// What the engine should do next for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run task `i` forwards.
    Do(usize),
    /// Undo task `i`.
    Undo(usize),
}

/// How a task's run ended, as reported by the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// It worked.
    Succeeded,
    /// It failed; the reason is recorded.
    Failed(String),
    /// It was cancelled by an abort.
    Cancelled,
}

/// A persisted change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Id (chosen by the runtime).
    pub id: Uuid,
    /// Kind.
    pub kind: ChangeKind,
    /// One-line summary, e.g. `install "netmon" 1.2.0`.
    pub summary: String,
    /// Packages it keeps busy until ready.
    pub packages: Vec<String>,
    /// Tasks, run in order; undone in reverse.
    pub tasks: Vec<Task>,
    /// Derived status.
    pub status: ChangeStatus,
    /// Whether `abort` was requested.
    pub aborted: bool,
    /// Who started it.
    pub actor: String,
    /// Leader time of creation, ms.
    pub spawn_ms: u64,
    /// Leader time it became ready, ms.
    pub ready_ms: Option<u64>,
    /// Offset of the entry that last changed it.
    pub revision: u64,
}

impl ChangeRecord {
    /// The next thing to run, or `None` when the change is ready.
    ///
    /// A task found `doing`/`undoing` (after a restart) is run again; otherwise undo work goes
    /// first, newest task first; otherwise the first task still to do.
    pub fn next_action(&self) -> Option<Action> {
        if let Some(i) = self.position(TaskStatus::Doing) {
            return Some(Action::Do(i));
        }
        if let Some(i) = self.position(TaskStatus::Undoing) {
            return Some(Action::Undo(i));
        }
        if let Some(i) = self
            .tasks
            .iter()
            .rposition(|t| t.status == TaskStatus::Undo)
        {
            return Some(Action::Undo(i));
        }
        self.position(TaskStatus::Do).map(Action::Do)
    }

    fn position(&self, status: TaskStatus) -> Option<usize> {
        self.tasks.iter().position(|t| t.status == status)
    }

    /// Marks task `i` as started (`do` → `doing`, `undo` → `undoing`); returns whether it
    /// moved. Starting an already started task (a rerun after restart) is allowed.
    pub fn start_task(&mut self, action: Action) -> bool {
        let (i, to) = match action {
            Action::Do(i) => (i, TaskStatus::Doing),
            Action::Undo(i) => (i, TaskStatus::Undoing),
        };
        let Some(task) = self.tasks.get_mut(i) else {
            return false;
        };
        let ok = matches!(
            (task.status, to),
            (TaskStatus::Do | TaskStatus::Doing, TaskStatus::Doing)
                | (TaskStatus::Undo | TaskStatus::Undoing, TaskStatus::Undoing)
        );
        if ok {
            task.status = to;
            if task.step.is_hook() || action_is_undo(action) && task.undo.is_hook() {
                task.attempts += 1;
            }
            self.status = self.derive_status();
        }
        ok
    }

    /// Records how task `i`'s run ended and moves the change accordingly:
    /// - doing: success → `done`; failure → `done` with a note if `ignore_error`, else `error`,
    ///   later tasks `hold` and every `done` task `undo`; cancelled → `undo` (it may have done
    ///   part of its work), later tasks `hold`, `done` tasks `undo`.
    /// - undoing: success → `undone`; failure or cancellation → `error` (undo continues).
    pub fn finish_task(&mut self, action: Action, outcome: &TaskOutcome) {
        let (i, undoing) = match action {
            Action::Do(i) => (i, false),
            Action::Undo(i) => (i, true),
        };
        let Some(task) = self.tasks.get_mut(i) else {
            return;
        };
        let mut unwind = false;
        if undoing {
            task.status = match outcome {
                TaskOutcome::Succeeded => TaskStatus::Undone,
                TaskOutcome::Failed(why) => {
                    task.log.push(TaskNote::UndoFailed { why: why.clone() });
                    TaskStatus::Error
                }
                TaskOutcome::Cancelled => {
                    task.log.push(TaskNote::UndoCancelled);
                    TaskStatus::Error
                }
            };
        } else {
            task.status = match outcome {
                TaskOutcome::Succeeded => TaskStatus::Done,
                TaskOutcome::Failed(why) if task.ignore_error => {
                    task.log.push(TaskNote::IgnoredError { why: why.clone() });
                    TaskStatus::Done
                }
                TaskOutcome::Failed(why) => {
                    task.log.push(TaskNote::Failed { why: why.clone() });
                    unwind = true;
                    TaskStatus::Error
                }
                TaskOutcome::Cancelled => {
                    task.log.push(TaskNote::Cancelled);
                    unwind = true;
                    TaskStatus::Undo
                }
            };
        }
        if unwind {
            self.unwind(i);
        } else if self.aborted && !undoing && task.status == TaskStatus::Done {
            // It finished just as the abort came in: it is undone like every done task.
            task.status = TaskStatus::Undo;
        }
        self.status = self.derive_status();
    }

    /// Marks the change aborted: tasks not started are held, done tasks are to be undone. A
    /// running task is left running; the runtime cancels it and reports `Cancelled`.
    pub fn abort(&mut self) {
        self.aborted = true;
        self.unwind(self.tasks.len());
        self.status = self.derive_status();
    }

    /// Everything before `failed` that is done gets undone; everything after it that has not
    /// started is held.
    fn unwind(&mut self, failed: usize) {
        for (j, t) in self.tasks.iter_mut().enumerate() {
            match t.status {
                TaskStatus::Done if j < failed => t.status = TaskStatus::Undo,
                TaskStatus::Do => t.status = TaskStatus::Hold,
                TaskStatus::Done
                | TaskStatus::Doing
                | TaskStatus::Undo
                | TaskStatus::Undoing
                | TaskStatus::Undone
                | TaskStatus::Error
                | TaskStatus::Hold => {}
            }
        }
    }

    /// The name of the first done irreversible task, if any: the change is past the point of
    /// no return.
    pub fn point_of_no_return(&self) -> Option<&str> {
        self.tasks
            .iter()
            .find(|t| t.irreversible && t.status == TaskStatus::Done)
            .map(|t| t.name.as_str())
    }

    /// The status the tasks add up to.
    pub fn derive_status(&self) -> ChangeStatus {
        let any = |s: TaskStatus| self.tasks.iter().any(|t| t.status == s);
        if any(TaskStatus::Undo) || any(TaskStatus::Undoing) {
            ChangeStatus::Undoing
        } else if any(TaskStatus::Do) || any(TaskStatus::Doing) {
            ChangeStatus::Doing
        } else if any(TaskStatus::Error) {
            ChangeStatus::Error
        } else if any(TaskStatus::Undone) || self.aborted {
            ChangeStatus::Undone
        } else {
            ChangeStatus::Done
        }
    }
}

fn action_is_undo(action: Action) -> bool {
    matches!(action, Action::Undo(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str) -> Step {
        Step::Hook {
            package: "p".into(),
            hook: name.into(),
            plug: None,
            slot: None,
        }
    }

    fn change(names: &[&str]) -> ChangeRecord {
        ChangeRecord {
            id: Uuid::nil(),
            kind: ChangeKind::Connect,
            summary: String::new(),
            packages: vec![],
            tasks: names
                .iter()
                .map(|n| Task::new(*n, hook(n), hook(&format!("un-{n}"))))
                .collect(),
            status: ChangeStatus::Doing,
            aborted: false,
            actor: String::new(),
            spawn_ms: 0,
            ready_ms: None,
            revision: 0,
        }
    }

    /// Drives a change to the end; `fail` says which (name, undo?) runs fail. Returns the run
    /// order as names (undo runs as `~name`).
    fn drive(c: &mut ChangeRecord, fail: &[&str]) -> Vec<String> {
        let mut ran = Vec::new();
        let mut guard = 0;
        while let Some(action) = c.next_action() {
            guard += 1;
            assert!(guard < 100, "change does not converge");
            assert!(c.start_task(action));
            let (i, label) = match action {
                Action::Do(i) => (i, c.tasks[i].name.clone()),
                Action::Undo(i) => (i, format!("~{}", c.tasks[i].name)),
            };
            let _ = i;
            let outcome = if fail.contains(&label.as_str()) {
                TaskOutcome::Failed("boom".into())
            } else {
                TaskOutcome::Succeeded
            };
            ran.push(label);
            c.finish_task(action, &outcome);
        }
        ran
    }

    #[test]
    fn success_runs_in_order() {
        let mut c = change(&["a", "b", "c"]);
        assert_eq!(drive(&mut c, &[]), ["a", "b", "c"]);
        assert_eq!(c.status, ChangeStatus::Done);
    }

    #[test]
    fn failure_undoes_backwards_without_undoing_the_failed_task() {
        let mut c = change(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            drive(&mut c, &["d"]),
            ["a", "b", "c", "d", "~c", "~b", "~a"]
        );
        assert_eq!(c.status, ChangeStatus::Error);
        assert_eq!(c.tasks[4].status, TaskStatus::Hold);
        assert_eq!(c.tasks[3].status, TaskStatus::Error);
        assert!(c.tasks[..3].iter().all(|t| t.status == TaskStatus::Undone));
    }

    #[test]
    fn failing_undo_is_recorded_and_undo_continues() {
        let mut c = change(&["a", "b", "c"]);
        assert_eq!(drive(&mut c, &["c", "~b"]), ["a", "b", "c", "~b", "~a"]);
        assert_eq!(c.tasks[1].status, TaskStatus::Error);
        assert_eq!(c.tasks[0].status, TaskStatus::Undone);
        assert_eq!(c.status, ChangeStatus::Error);
    }

    #[test]
    fn ignored_errors_do_not_fail_the_change() {
        let mut c = change(&["a", "b"]);
        c.tasks[0].ignore_error = true;
        assert_eq!(drive(&mut c, &["a"]), ["a", "b"]);
        assert_eq!(c.status, ChangeStatus::Done);
        assert_eq!(
            c.tasks[0].log,
            [TaskNote::IgnoredError { why: "boom".into() }]
        );
        assert_eq!(c.tasks[0].log[0].to_string(), "ignored error: boom");
    }

    #[test]
    fn abort_cancels_the_running_task_and_undoes_it_and_everything_before() {
        let mut c = change(&["a", "b", "c"]);
        let a = c.next_action().unwrap();
        c.start_task(a);
        c.finish_task(a, &TaskOutcome::Succeeded);
        let b = c.next_action().unwrap();
        c.start_task(b);
        c.abort();
        assert_eq!(c.tasks[2].status, TaskStatus::Hold);
        // The running task is still the next action until it reports.
        assert_eq!(c.next_action(), Some(Action::Do(1)));
        c.finish_task(b, &TaskOutcome::Cancelled);
        assert_eq!(drive(&mut c, &[]), ["~b", "~a"]);
        assert_eq!(c.status, ChangeStatus::Undone);
    }

    #[test]
    fn a_task_found_doing_after_restart_runs_again() {
        let mut c = change(&["a", "b"]);
        let a = c.next_action().unwrap();
        c.start_task(a);
        // (restart here)
        assert_eq!(c.next_action(), Some(Action::Do(0)));
        assert!(c.start_task(Action::Do(0)));
        assert_eq!(c.tasks[0].attempts, 2);
    }

    #[test]
    fn only_the_next_task_can_start() {
        let mut c = change(&["a", "b"]);
        c.tasks[0].status = TaskStatus::Done;
        assert!(!c.start_task(Action::Undo(0)));
        assert!(!c.start_task(Action::Do(5)));
    }
}
