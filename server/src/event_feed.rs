//! [`MasterEvents`] fed from the arbiter's hooks: worker ages and the worker count are tracked
//! here, since the arbiter's hooks give only pids and the new count.

use std::collections::HashMap;

use crate::events::{MasterEvent, MasterEvents};

/// The master's events for an optional observer.
pub(crate) struct EventFeed {
    events: Option<Box<dyn MasterEvents>>,
    /// Age of each live worker, by pid (1 for the first forked, counting up, as gunicorn's).
    ages: HashMap<i32, u64>,
    forked: u64,
    workers: usize,
}

impl EventFeed {
    pub(crate) fn new(events: Option<Box<dyn MasterEvents>>, workers: usize) -> Self {
        EventFeed {
            events,
            ages: HashMap::new(),
            forked: 0,
            workers,
        }
    }

    fn send(&mut self, event: MasterEvent) {
        if let Some(events) = &mut self.events {
            events.event(event);
        }
    }

    pub(crate) fn before_fork(&mut self) {
        let age = self.forked + 1;
        self.send(MasterEvent::PreFork { age });
    }

    pub(crate) fn forked(&mut self, pid: i32) {
        self.forked += 1;
        self.ages.insert(pid, self.forked);
    }

    /// In the new worker.
    pub(crate) fn forked_child(&mut self) {
        if let Some(events) = &mut self.events {
            events.forked_child();
        }
        self.events = None;
    }

    pub(crate) fn exited(&mut self, pid: i32) {
        let age = self.ages.remove(&pid).unwrap_or_default();
        self.send(MasterEvent::ChildExit { pid, age });
    }

    pub(crate) fn count_changed(&mut self, new: usize) {
        let old = std::mem::replace(&mut self.workers, new);
        if old != new {
            self.send(MasterEvent::WorkersChanged { new, old });
        }
    }

    pub(crate) fn ready(&mut self) {
        self.send(MasterEvent::Ready);
    }

    pub(crate) fn reload(&mut self) {
        self.send(MasterEvent::Reload);
    }

    pub(crate) fn pre_exec(&mut self) {
        self.send(MasterEvent::PreExec);
    }

    pub(crate) fn exiting(&mut self) {
        if let Some(events) = &mut self.events {
            events.exiting();
        }
    }
}
