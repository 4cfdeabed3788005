//! A latest-value channel: one writer publishes versions of a value, readers wait for a
//! version newer than the last one they saw.
//!
//! Design: a mutex holding the value and its version, and an [`event_listener::Event`] to
//! wake readers. A reader never queues anything: however many versions were published while
//! it was busy, it sees only the newest (a reconfigured session needs the current plan, not
//! the history of plans), so memory stays one value whatever the rate of writes.
//!
//! ## Cancel safety
//! [`Receiver::changed`] is cancel safe: dropping the future loses nothing, the next call
//! sees the same newer version.
//!
//! Owns: nothing but the value. Must not touch: what it carries.

use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

struct Shared<T> {
    value: Mutex<(u64, T)>,
    event: Event,
}

impl<T> Shared<T> {
    /// The version and the value; a writer that panicked left a whole value (it assigns
    /// both fields together), so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, (u64, T)> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing end.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A reading end; each remembers the version it saw last.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

/// A channel holding `value` as version 0; receivers start having seen it.
pub fn channel<T: Clone>(value: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: Mutex::new((0, value)),
        event: Event::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, seen: 0 },
    )
}

impl<T: Clone> Sender<T> {
    /// Publishes a new version and wakes every waiting receiver.
    pub fn send(&self, value: T) {
        {
            let mut v = self.shared.lock();
            v.0 = v.0.wrapping_add(1);
            v.1 = value;
        }
        self.shared.event.notify(usize::MAX);
    }

    /// The current value.
    pub fn borrow(&self) -> T {
        self.shared.lock().1.clone()
    }

    /// A receiver that has seen the current version.
    pub fn subscribe(&self) -> Receiver<T> {
        let seen = self.shared.lock().0;
        Receiver {
            shared: self.shared.clone(),
            seen,
        }
    }
}

impl<T: Clone> Receiver<T> {
    /// The newest value when it is newer than the last one seen (and marks it seen).
    pub fn try_changed(&mut self) -> Option<T> {
        let v = self.shared.lock();
        if v.0 == self.seen {
            return None;
        }
        self.seen = v.0;
        Some(v.1.clone())
    }

    /// Waits for a version newer than the last one seen and returns it.
    pub async fn changed(&mut self) -> T {
        loop {
            if let Some(v) = self.try_changed() {
                return v;
            }
            let listener = self.shared.event.listen();
            if let Some(v) = self.try_changed() {
                return v;
            }
            listener.await;
        }
    }

    /// The current value, seen or not.
    pub fn borrow(&self) -> T {
        self.shared.lock().1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_receiver_sees_only_the_newest_version_once() {
        let (tx, mut rx) = channel(1u32);
        // TC0: nothing new at first.
        assert_eq!(rx.try_changed(), None);
        // TC1: three sends while busy: the newest, once.
        tx.send(2);
        tx.send(3);
        tx.send(4);
        assert_eq!(rx.try_changed(), Some(4));
        assert_eq!(rx.try_changed(), None);
        assert_eq!(rx.borrow(), 4);
        // TC2: a new subscriber starts up to date; a clone keeps its reader's place.
        let mut late = tx.subscribe();
        assert_eq!(late.try_changed(), None);
        tx.send(5);
        let mut copy = late.clone();
        assert_eq!(late.try_changed(), Some(5));
        assert_eq!(copy.try_changed(), Some(5));
    }

    #[test]
    fn changed_wakes_a_waiting_receiver() {
        let (tx, mut rx) = channel(0u32);
        let t = std::thread::spawn(move || smol::block_on(rx.changed()));
        std::thread::sleep(Duration::from_millis(20));
        tx.send(9);
        assert_eq!(t.join().expect("the waiter"), 9);
    }
}
