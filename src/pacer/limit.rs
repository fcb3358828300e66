//! A concurrency limit whose size can change while permits are out: a tokio
//! `Semaphore` grown with `add_permits` and shrunk with `forget_permits`. Only idle
//! permits can be forgotten, so a shrink below the permits in use is kept as a debt,
//! paid by forgetting permits as they come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limit {
    semaphore: Arc<Semaphore>,
    inner: Arc<Shared>,
}

struct Shared {
    /// The limit as set: permits in circulation once the debt is paid.
    size: AtomicUsize,
    debt: AtomicUsize,
}

/// A call's right to be in flight. Dropping it returns it, or pays the debt.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let permit = self.permit.take().expect("a permit is dropped once");
        let paid = self
            .inner
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if paid {
            permit.forget();
        }
    }
}

impl Limit {
    pub fn new(size: usize) -> Limit {
        let size = size.max(1);
        Limit {
            semaphore: Arc::new(Semaphore::new(size)),
            inner: Arc::new(Shared {
                size: AtomicUsize::new(size),
                debt: AtomicUsize::new(0),
            }),
        }
    }

    pub async fn acquire(&self) -> Permit {
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Permit {
            permit: Some(permit),
            inner: self.inner.clone(),
        }
    }

    pub fn size(&self) -> usize {
        self.inner.size.load(Ordering::Acquire)
    }

    /// Sets the limit to `size` (at least 1). Callers serialise changes (the
    /// controller holds a lock while it decides), so size and debt stay consistent.
    pub fn resize(&self, size: usize) {
        let size = size.max(1);
        let old = self.inner.size.swap(size, Ordering::AcqRel);
        if size > old {
            let mut grow = size - old;
            // Cancel debt first: those permits were never forgotten.
            while grow > 0 {
                match self
                    .inner
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                {
                    Ok(_) => grow -= 1,
                    Err(_) => break,
                }
            }
            self.semaphore.add_permits(grow);
        } else if size < old {
            let shrink = old - size;
            let forgotten = self.semaphore.forget_permits(shrink);
            self.inner
                .debt
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn can_acquire(limit: &Limit) -> Option<Permit> {
        tokio::time::timeout(Duration::from_millis(5), limit.acquire())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_below_what_is_in_flight_is_paid_back_as_permits_return() {
        let limit = Limit::new(4);
        let mut held: Vec<Permit> =
            futures_util::future::join_all((0..4).map(|_| limit.acquire())).await;
        limit.resize(2);
        let kept = held.pop();
        drop(held); // three come back: two pay the debt
        let a = can_acquire(&limit)
            .await
            .expect("one slot free: 2 allowed, 1 in flight");
        assert!(can_acquire(&limit).await.is_none(), "the limit is 2");
        drop((a, kept));
    }

    #[tokio::test(start_paused = true)]
    async fn growing_cancels_debt_before_adding_permits() {
        let limit = Limit::new(3);
        let held: Vec<Permit> =
            futures_util::future::join_all((0..3).map(|_| limit.acquire())).await;
        limit.resize(1); // debt 2
        limit.resize(2); // debt 1
        drop(held);
        let a = can_acquire(&limit).await.unwrap();
        let b = can_acquire(&limit).await.unwrap();
        assert!(can_acquire(&limit).await.is_none());
        assert_eq!(limit.size(), 2);
        drop((a, b));
        limit.resize(5);
        let all: Vec<Permit> =
            futures_util::future::join_all((0..5).map(|_| limit.acquire())).await;
        assert_eq!(all.len(), 5);
        assert!(can_acquire(&limit).await.is_none());
    }
}
