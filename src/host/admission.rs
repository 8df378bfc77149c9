//! Admission of instances: a slot of the pooling allocator and room in the memory budget, both
//! shared by every function of the host, and the instances and stores kept for later events,
//! which give both back as soon as an admission would otherwise have to wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::failure::Failure;
use super::function::{FunctionShared, Reusable, Spent};

/// The host's instance slots and memory budget, and who keeps admitted slots for later.
pub(super) struct Admissions {
    /// One permit per pooled instance slot, so instantiation never fails for lack of one.
    permits: Arc<Semaphore>,
    /// How many slots there are.
    slots: usize,
    /// The memory budget, one permit per page.
    budget: Arc<Semaphore>,
    /// Admissions waiting for a slot or memory now. While there are any, nothing admitted is
    /// kept for later.
    waiting: AtomicUsize,
    /// What each loaded function keeps for later.
    keepers: Mutex<Vec<Weak<Kept>>>,
}

/// What an instance holds while it lives: its slot and its share of the memory budget.
pub(super) struct Admission {
    _slot: OwnedSemaphorePermit,
    memory: OwnedSemaphorePermit,
    /// The function whose live instances this one is counted among.
    function: Option<Arc<FunctionShared>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(function) = &self.function {
            function.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Admission {
    /// Gives back the memory budget this admission holds beyond `pages`.
    /// The instance ran its one event and stays only until its store is dropped: it is no longer
    /// counted among its function's live instances, and holds of the memory budget only `pages`
    /// (what its memory grew to), not its function's limit.
    pub(super) fn spend(&mut self, pages: u32) {
        if let Some(function) = self.function.take() {
            function.live.fetch_sub(1, Ordering::Relaxed);
        }
        self.shrink_to(pages);
    }

    fn shrink_to(&mut self, pages: u32) {
        let held = self.memory.num_permits();
        if (pages as usize) < held {
            drop(self.memory.split(held - pages as usize));
        }
    }
}

/// What one function keeps for later events: reusable instances (`isolation = "reuse"`) and
/// stores with room for more fresh instances (`isolation = "event"`). Both hold admissions.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) idle: Mutex<Vec<Reusable>>,
    pub(super) spent: Mutex<Vec<Spent>>,
}

impl Kept {
    /// Drops everything kept, outside the locks.
    fn clear(&self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        let spent = std::mem::take(&mut *lock(&self.spent));
        drop((idle, spent));
    }
}

/// Locks a list of kept things; a panic elsewhere cannot leave one half-updated.
pub(super) fn lock<T>(list: &Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    list.lock().unwrap_or_else(|p| p.into_inner())
}

impl Admissions {
    pub(super) fn new(slots: usize, pages: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(slots)),
            slots,
            budget: Arc::new(Semaphore::new(pages)),
            waiting: AtomicUsize::new(0),
            keepers: Mutex::new(Vec::new()),
        }
    }

    /// A new function's list of what it keeps for later, given back when an admission waits.
    pub(super) fn keeper(&self) -> Arc<Kept> {
        let kept = Arc::new(Kept::default());
        let mut keepers = lock(&self.keepers);
        keepers.retain(|k| k.strong_count() > 0);
        keepers.push(Arc::downgrade(&kept));
        kept
    }

    /// Waits for an instance slot and for `pages` of the memory budget. The pool has a slot for
    /// every permit, so instantiation never fails for lack of one. The instance is counted among
    /// `function`'s live ones while the admission lives.
    pub(super) async fn admit(
        &self,
        pages: u32,
        function: Option<&Arc<FunctionShared>>,
    ) -> Result<Admission, Failure> {
        let (slot, memory) = self.permits(pages).await?;
        if let Some(function) = function {
            function.live.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Admission {
            _slot: slot,
            memory,
            function: function.cloned(),
        })
    }

    async fn permits(
        &self,
        pages: u32,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Failure> {
        if let Ok(memory) = self.budget.clone().try_acquire_many_owned(pages)
            && let Ok(slot) = self.permits.clone().try_acquire_owned()
        {
            return Ok((slot, memory));
        }
        // Boxed: the semaphores' wait futures would otherwise sit in every call's future, which
        // is moved (copied) as each future around it is built.
        Box::pin(self.wait_for_permits(pages)).await
    }

    /// [`Admissions::permits`] when the slots or the memory budget are used up.
    async fn wait_for_permits(
        &self,
        pages: u32,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Failure> {
        // Counted before what is kept is given back, and checked by whoever keeps something
        // after it: either this call sees it kept and drops it, or the keeper sees this call
        // waiting and does.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        self.release_kept();
        let gone = |_| Failure::Instantiation("the host is shutting down".into());
        let memory = self
            .budget
            .clone()
            .acquire_many_owned(pages)
            .await
            .map_err(gone)?;
        let slot = self.permits.clone().acquire_owned().await.map_err(gone)?;
        Ok((slot, memory))
    }

    /// Whether a store whose instances are spent may be kept for more: only while at least a
    /// quarter of the slots are free. A kept store holds the slots of its spent instances until
    /// it is dropped; near the limit, keeping it would make the next admission wait, which
    /// gives back everything kept (so every store would be kept only to be dropped in a heap).
    pub(super) fn slots_to_spare(&self) -> bool {
        self.permits.available_permits() * 4 >= self.slots
    }

    /// Keeps `item` in `list` for a later event, unless an admission is waiting for what it
    /// holds.
    pub(super) fn keep<T>(&self, list: &Mutex<Vec<T>>, item: T) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            drop(item);
            self.release_kept();
            return;
        }
        lock(list).push(item);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.release_kept();
        }
    }

    /// Drops every function's kept instances and stores, freeing their slots and memory.
    fn release_kept(&self) {
        let keepers: Vec<Arc<Kept>> = lock(&self.keepers)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for kept in keepers {
            kept.clear();
        }
    }
}

/// Counts one admission as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_gives_back_the_pages_beyond_what_is_kept() {
        let admissions = Admissions::new(2, 10);
        let mut a = admissions.admit(8, None).await.unwrap();
        assert_eq!(admissions.budget.available_permits(), 2);
        a.shrink_to(3);
        assert_eq!(admissions.budget.available_permits(), 7);
        a.shrink_to(5);
        assert_eq!(admissions.budget.available_permits(), 7, "never grows");
        drop(a);
        assert_eq!(admissions.budget.available_permits(), 10);
    }

    #[tokio::test]
    async fn stores_are_kept_only_while_a_quarter_of_the_slots_is_free() {
        let admissions = Admissions::new(8, 100);
        let mut held = Vec::new();
        for _ in 0..6 {
            assert!(admissions.slots_to_spare());
            held.push(admissions.admit(1, None).await.unwrap());
        }
        // 2 of 8 free.
        assert!(admissions.slots_to_spare());
        held.push(admissions.admit(1, None).await.unwrap());
        assert!(!admissions.slots_to_spare(), "1 of 8 free");
        held.pop();
        assert!(admissions.slots_to_spare());
    }

    #[tokio::test]
    async fn a_waiting_admission_takes_back_what_is_kept() {
        let admissions = Arc::new(Admissions::new(1, 10));
        let kept_list: Arc<Mutex<Vec<Admission>>> = Arc::new(Mutex::new(Vec::new()));
        let first = admissions.admit(1, None).await.unwrap();
        // Kept while nobody waits.
        admissions.keep(&kept_list, first);
        assert_eq!(lock(&kept_list).len(), 1);
        assert_eq!(admissions.permits.available_permits(), 0);
        // A waiter cannot reach a list that no keeper owns, so it waits until the holder, seeing
        // it waiting, refuses to keep what it holds.
        let waiter = tokio::spawn({
            let admissions = admissions.clone();
            async move { admissions.admit(1, None).await.map(|_| ()) }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while admissions.waiting.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never waited");
            tokio::task::yield_now().await;
        }
        let held = lock(&kept_list).pop().unwrap();
        let other: Mutex<Vec<Admission>> = Mutex::new(Vec::new());
        admissions.keep(&other, held);
        assert!(lock(&other).is_empty(), "kept while an admission waited");
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter was admitted")
            .unwrap()
            .unwrap();
    }
}
