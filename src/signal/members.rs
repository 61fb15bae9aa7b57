//! Member lists that grow past one datagram: pages and digests.
//!
//! A member list once travelled as one [`Response::Members`]; at about 19 supernodes it no
//! longer fit in a frame and the answer was never sent. Now a list is asked for page by page
//! ([`Request::CMembersPage`]): each page holds as many members as fit in the frame budget with
//! a margin ([`page`]), sorted by ID, and names the last ID it holds as the cursor for the next
//! (`next`, `None` on the last page). A cursor is an ID, not an offset, so a member that joins or
//! leaves between two pages never makes another one skipped or repeated.
//!
//! Every page carries the [`Digest`] of the whole list. An asker that holds a complete list sends
//! its digest; while the list is unchanged the answer is one empty page (most askers, most of the
//! time). A [`Pager`] collects pages and starts over when the digest changes under it.
//!
//! A client does not need the whole list: it keeps a host cache of a few dozen supernodes. In a
//! large mesh the list changes every few seconds (promotions, departures), so fetching all of
//! it on every change costs each client a page per ~17 members: the mesh's total cost would
//! grow with clients × supernodes. A [`Pager::bounded`] pager fetches at most a few pages,
//! starting at a cursor of its own (its ID: clients spread over the list, so their host caches
//! and standbys do too) and wrapping round at the end; [`Pager::complete`] says whether that was
//! the whole list.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{NodeInfo, Request, Response, encode};
use crate::identity::UserId;

/// Hash of a sorted member list (SHA-256 truncated to 128 bits: collisions between two lists of
/// one mesh are not a concern at that length, and a wrong "unchanged" costs one refresh period).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 16]);

/// Bytes kept free under the frame budget in every page, so a page never sits on the edge (the
/// varint of the list length and of `total` grow with the list).
pub const PAGE_MARGIN: usize = 64;

/// The digest of `list` (sorted by ID, as [`page`] wants it).
pub fn digest(list: &[NodeInfo]) -> Digest {
    let mut h = Sha256::new();
    h.update(b"voxmesh/v1/members\0");
    for n in list {
        h.update(postcard::to_allocvec(n).expect("node infos serialize"));
    }
    let full = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    Digest(d)
}

/// The page of `list` (sorted by ID, with its digest `d`) after the cursor `after` (from the
/// start with `None`), as large as fits in `budget` bytes once encoded, minus [`PAGE_MARGIN`].
/// An asker that already holds `d` (`known`) gets an empty last page.
pub fn page(
    list: &[NodeInfo],
    d: Digest,
    after: Option<UserId>,
    known: Option<Digest>,
    budget: usize,
) -> Response {
    let total = list.len() as u32;
    if known == Some(d) {
        return Response::MembersPage {
            members: Vec::new(),
            next: None,
            digest: d,
            total,
        };
    }
    let start = match after {
        None => 0,
        Some(a) => list.partition_point(|n| n.key.id <= a),
    };
    let limit = budget.saturating_sub(PAGE_MARGIN);
    let mut members = Vec::new();
    if let Some(first) = list.get(start) {
        // The page's size, summed rather than encoded once per member added (which cost the
        // square of the page): an empty page with the cursor present (it is whenever more
        // follow, and an ID is fixed-size), plus each member's encoding, plus the growth of
        // the list length's varint.
        let empty = Response::MembersPage {
            members: Vec::new(),
            next: Some(first.key.id),
            digest: d,
            total,
        };
        let mut size = encode(&empty).len();
        for n in &list[start..] {
            let k = members.len() + 1;
            let grown = size
                + postcard::to_allocvec(n)
                    .expect("node infos serialize")
                    .len()
                + varint_len(k)
                - varint_len(k - 1);
            if grown > limit {
                break;
            }
            size = grown;
            members.push(n.clone());
        }
    }
    let end = start + members.len();
    let next = (end < list.len()).then(|| list[end - 1].key.id);
    debug_assert!(
        !members.is_empty() || end == list.len(),
        "a budget below one member"
    );
    Response::MembersPage {
        members,
        next,
        digest: d,
        total,
    }
}

/// Bytes of postcard's varint of `n`.
fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut n = n >> 7;
    while n > 0 {
        len += 1;
        n >>= 7;
    }
    len
}

/// Restarts a [`Pager`] allows before it settles for what it has (the list keeps changing under
/// it: a mesh in churn). Bounds the pages one refresh can cost.
pub const MAX_RESTARTS: u32 = 3;

/// What a [`Pager`] wants after a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PagerStep {
    /// Ask for this next.
    Ask(Request),
    /// The list is complete (or unchanged since the digest the pager started with): here it is,
    /// with its digest. `None` for the list: unchanged.
    Done(Option<Vec<NodeInfo>>, Digest),
}

/// Collects a member list page by page (the asker's side of [`page`]).
#[derive(Clone, Debug, Default)]
pub struct Pager {
    /// The digest of the complete list we hold, if any.
    known: Option<Digest>,
    /// The digest of the list being collected, and what came so far.
    collecting: Option<(Digest, Vec<NodeInfo>)>,
    restarts: u32,
    /// Bounded: where to start, and at most how many pages per fetch ([`Pager::bounded`]).
    bound: Option<(UserId, u32)>,
    /// Pages of this fetch so far, and whether it wrapped round to the start of the list.
    pages: u32,
    wrapped: bool,
    /// The list's length as the last page said, and whether the last list was all of it.
    total: u32,
    complete: bool,
    /// Start at the cursor: the last fetch did not get the whole list (a list within the bound
    /// is asked from its start, as an unbounded pager would).
    spread: bool,
}

impl Pager {
    /// A pager that already holds a complete list with digest `known`.
    pub fn new(known: Option<Digest>) -> Pager {
        Pager {
            known,
            ..Pager::default()
        }
    }

    /// A pager that asks for at most `max_pages` pages per fetch (at least one), starting after
    /// `start` and wrapping round: a slice of the list near `start` (the asker's own ID).
    pub fn bounded(start: UserId, max_pages: u32) -> Pager {
        Pager {
            bound: Some((start, max_pages.max(1))),
            ..Pager::default()
        }
    }

    /// Whether the last list [`PagerStep::Done`] gave was the whole list (always, unbounded).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// The first request.
    pub fn first(&mut self) -> Request {
        self.collecting = None;
        self.restarts = 0;
        self.pages = 0;
        self.wrapped = false;
        Request::CMembersPage {
            after: self.start(),
            digest: self.known,
        }
    }

    /// Where a fetch starts: the cursor of a bounded pager, else the list's start.
    fn start(&self) -> Option<UserId> {
        self.bound.filter(|_| self.spread).map(|(s, _)| s)
    }

    /// A page arrived: what to do next. `None` if `resp` is not a page.
    pub fn on_page(&mut self, resp: Response) -> Option<PagerStep> {
        let Response::MembersPage {
            members,
            next,
            digest,
            total,
        } = resp
        else {
            return None;
        };
        if self.collecting.is_none() && next.is_none() && Some(digest) == self.known {
            return Some(PagerStep::Done(None, digest));
        }
        self.total = total;
        self.pages += 1;
        // A bounded fetch past its start again (it wrapped round and came back to it).
        let last = members.last().map(|n| n.key.id);
        let round = self.wrapped
            && self
                .start()
                .is_some_and(|s| last.is_some_and(|l| l >= s) || next.is_some_and(|n| n >= s));
        match &mut self.collecting {
            Some((d, got)) if *d == digest => got.extend(members),
            Some(_) if self.restarts < MAX_RESTARTS => {
                // The list changed under us: start over, so what we hold is one list.
                self.restarts += 1;
                self.collecting = None;
                self.pages = 0;
                self.wrapped = false;
                return Some(PagerStep::Ask(Request::CMembersPage {
                    after: self.start(),
                    digest: None,
                }));
            }
            Some((d, got)) => {
                // Still changing: keep the union, labelled with the newest digest.
                *d = digest;
                got.extend(members);
            }
            None => self.collecting = Some((digest, members)),
        }
        let more = match self.bound {
            None => true,
            Some((_, max)) => self.pages < max && !round,
        };
        match next {
            Some(after) if more => Some(PagerStep::Ask(Request::CMembersPage {
                after: Some(after),
                digest: None,
            })),
            // The end of the list, a bounded fetch that started past its beginning: wrap.
            None if more && !self.wrapped && self.start().is_some() => {
                self.wrapped = true;
                Some(PagerStep::Ask(Request::CMembersPage {
                    after: None,
                    digest: None,
                }))
            }
            _ => {
                let (d, mut list) = self.collecting.take().expect("collecting");
                list.sort_by_key(|n| n.key.id);
                list.dedup_by_key(|n| n.key.id);
                self.complete = list.len() >= self.total as usize;
                self.spread = !self.complete;
                self.known = Some(d);
                Some(PagerStep::Done(Some(list), d))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::session::Config;
    use std::net::SocketAddr;

    fn node(n: u32) -> NodeInfo {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id[19] = (n * 7) as u8;
        // Half IPv6, the longer encoding.
        let addr: SocketAddr = if n % 2 == 0 {
            format!("[2001:db8::{:x}:{:x}]:65000", n >> 16, n & 0xffff)
        } else {
            format!("198.51.{}.{}:65000", (n >> 8) & 0xff, n & 0xff)
        }
        .parse()
        .unwrap();
        NodeInfo {
            key: NodeKey {
                id: UserId(id),
                noise: [n as u8; 32],
            },
            addr,
        }
    }

    fn list(n: u32) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = (0..n).map(node).collect();
        v.sort_by_key(|n| n.key.id);
        v
    }

    /// Serves `pages` of `list` to `pager` until done; every reply checked against the budget.
    fn fetch(pager: &mut Pager, list: &[NodeInfo], budget: usize) -> (PagerStep, usize) {
        let d = digest(list);
        let mut req = pager.first();
        for asked in 1..=1000 {
            let Request::CMembersPage { after, digest: k } = req else {
                panic!("{req:?}")
            };
            let resp = page(list, d, after, k, budget);
            let len = encode(&resp).len();
            assert!(len <= budget, "a page of {len} bytes over {budget}");
            match pager.on_page(resp).expect("a page") {
                PagerStep::Ask(r) => req = r,
                done => return (done, asked),
            }
        }
        panic!("paging did not end");
    }

    #[test]
    fn a_thousand_members_arrive_in_pages_that_each_fit_a_datagram() {
        let budget = Config::default().max_body();
        let all = list(1000);
        // The old single answer could not have carried this.
        assert!(encode(&Response::Members(all.clone())).len() > budget);
        let mut pager = Pager::new(None);
        let (done, pages) = fetch(&mut pager, &all, budget);
        let PagerStep::Done(Some(got), d) = done else {
            panic!("{done:?}")
        };
        assert_eq!(got, all, "every member, once, in order");
        assert_eq!(d, digest(&all));
        // About 15 members a page: the pages are full, not one member each.
        assert!((40..=90).contains(&pages), "{pages} pages");
        // Asked again with the digest: one empty page says nothing changed.
        let (again, pages) = fetch(&mut pager, &all, budget);
        assert_eq!((again, pages), (PagerStep::Done(None, d), 1));
    }

    #[test]
    fn pages_are_filled_to_the_budget_and_no_further() {
        let budget = Config::default().max_body();
        let limit = budget - PAGE_MARGIN;
        let all = list(1000);
        let d = digest(&all);
        let mut after = None;
        loop {
            let p = page(&all, d, after, None, budget);
            assert!(encode(&p).len() <= limit);
            let Response::MembersPage { members, next, .. } = p else {
                panic!("{p:?}")
            };
            let Some(n) = next else { break };
            // One more member, with the cursor on it, would not have fitted.
            let more = all[all.partition_point(|m| m.key.id <= n)].clone();
            let next = Some(more.key.id);
            let mut members = members;
            members.push(more);
            let bigger = Response::MembersPage {
                members,
                next,
                digest: d,
                total: 1000,
            };
            assert!(encode(&bigger).len() > limit);
            after = Some(n);
        }
    }

    #[test]
    fn small_lists_take_one_page_and_empty_lists_work() {
        let budget = Config::default().max_body();
        for n in [0, 1, 5] {
            let all = list(n);
            let (done, pages) = fetch(&mut Pager::new(None), &all, budget);
            assert_eq!(pages, 1);
            assert_eq!(done, PagerStep::Done(Some(all.clone()), digest(&all)));
        }
    }

    #[test]
    fn a_list_that_changes_between_pages_is_fetched_again_whole() {
        let budget = Config::default().max_body();
        let before = list(100);
        let mut after = list(101);
        after.retain(|n| n.key.id != before[3].key.id);
        let mut pager = Pager::new(None);
        let Request::CMembersPage {
            after: a,
            digest: k,
        } = pager.first()
        else {
            unreachable!()
        };
        let first = page(&before, digest(&before), a, k, budget);
        let Some(PagerStep::Ask(next)) = pager.on_page(first) else {
            panic!("one page cannot hold 100")
        };
        let Request::CMembersPage {
            after: a,
            digest: k,
        } = next
        else {
            unreachable!()
        };
        // The second page comes from the changed list: the pager starts over.
        let second = page(&after, digest(&after), a, k, budget);
        let Some(PagerStep::Ask(restart)) = pager.on_page(second) else {
            panic!("should restart")
        };
        assert_eq!(
            restart,
            Request::CMembersPage {
                after: None,
                digest: None
            }
        );
        let d = digest(&after);
        let mut req = restart;
        loop {
            let Request::CMembersPage {
                after: a,
                digest: k,
            } = req
            else {
                unreachable!()
            };
            match pager.on_page(page(&after, d, a, k, budget)).unwrap() {
                PagerStep::Ask(r) => req = r,
                PagerStep::Done(got, got_d) => {
                    assert_eq!((got, got_d), (Some(after.clone()), d));
                    break;
                }
            }
        }
    }

    #[test]
    fn a_cursor_past_a_departed_member_skips_nobody() {
        let all = list(50);
        let d = digest(&all);
        // The cursor names a member that has left since: the page starts after where it was.
        let gone = all[20].key.id;
        let rest: Vec<NodeInfo> = all.iter().filter(|n| n.key.id != gone).cloned().collect();
        let Response::MembersPage { members, .. } = page(&rest, d, Some(gone), None, 100_000)
        else {
            unreachable!()
        };
        assert_eq!(members, all[21..].to_vec());
    }

    /// Fetches with `pager` until done: the step and the pages it took.
    fn fetch_bounded(pager: &mut Pager, all: &[NodeInfo]) -> (PagerStep, u32) {
        let (d, budget) = (digest(all), Config::default().max_body());
        let mut req = pager.first();
        let mut pages = 0;
        loop {
            let Request::CMembersPage { after, digest } = req else {
                panic!("{req:?}")
            };
            pages += 1;
            match pager.on_page(page(all, d, after, digest, budget)).unwrap() {
                PagerStep::Ask(r) => req = r,
                done => return (done, pages),
            }
        }
    }

    #[test]
    fn a_bounded_pager_takes_a_slice_from_its_cursor_and_wraps() {
        let mut all = list(1000);
        let start = all[990].key.id;
        let mut pager = Pager::bounded(start, 3);
        // First from the list's start (it may fit in one page), as far as the bound.
        let (PagerStep::Done(Some(got), _), 3) = fetch_bounded(&mut pager, &all) else {
            panic!("three pages")
        };
        assert!(!pager.complete());
        assert_eq!(got[..], all[..got.len()]);
        // Unchanged: one empty page.
        let d = digest(&all);
        assert_eq!(
            fetch_bounded(&mut pager, &all),
            (PagerStep::Done(None, d), 1)
        );
        // Changed: from the cursor on, the nine after it, then round to the list's start.
        all.remove(500);
        let (PagerStep::Done(Some(got), _), 3) = fetch_bounded(&mut pager, &all) else {
            panic!("three pages")
        };
        assert!(!pager.complete());
        assert!(got.iter().any(|n| n.key.id == all[998].key.id));
        assert!(got.iter().any(|n| n.key.id == all[0].key.id));
        assert!(got.iter().all(|n| n.key.id != start));
        assert!(got.len() > 9 && got.len() < 999, "{}", got.len());
        // A list within the bound comes whole, in one page when it fits one.
        let small = list(10);
        let mut pager = Pager::bounded(small[4].key.id, 3);
        assert_eq!(
            fetch_bounded(&mut pager, &small),
            (PagerStep::Done(Some(small.clone()), digest(&small)), 1)
        );
        assert!(pager.complete());
    }

    #[test]
    fn something_other_than_a_page_is_not_taken_for_one() {
        assert_eq!(Pager::new(None).on_page(Response::Ok), None);
    }
}
