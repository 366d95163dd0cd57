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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    struct Recorder(Rc<RefCell<Vec<MasterEvent>>>);

    impl MasterEvents for Recorder {
        fn event(&mut self, event: MasterEvent) {
            self.0.borrow_mut().push(event);
        }
    }

    #[test]
    fn ages_follow_forks_and_counts_report_old_and_new() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut feed = EventFeed::new(Some(Box::new(Recorder(seen.clone()))), 2);
        for pid in [10, 11] {
            feed.before_fork();
            feed.forked(pid);
        }
        feed.exited(10);
        feed.exited(99);
        feed.count_changed(2);
        feed.count_changed(3);
        assert_eq!(
            *seen.borrow(),
            [
                MasterEvent::PreFork { age: 1 },
                MasterEvent::PreFork { age: 2 },
                MasterEvent::ChildExit { pid: 10, age: 1 },
                MasterEvent::ChildExit { pid: 99, age: 0 },
                MasterEvent::WorkersChanged { new: 3, old: 2 },
            ]
        );
        feed.forked_child();
        feed.ready();
        assert_eq!(seen.borrow().len(), 5, "a worker sends no events");
    }
}
