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
}

impl Pager {
    /// A pager that already holds a complete list with digest `known`.
    pub fn new(known: Option<Digest>) -> Pager {
        Pager {
            known,
            ..Pager::default()
        }
    }

    /// The first request.
    pub fn first(&mut self) -> Request {
        self.collecting = None;
        self.restarts = 0;
        Request::CMembersPage {
            after: None,
            digest: self.known,
        }
    }

    /// A page arrived: what to do next. `None` if `resp` is not a page.
    pub fn on_page(&mut self, resp: Response) -> Option<PagerStep> {
        let Response::MembersPage {
            members,
            next,
            digest,
            ..
        } = resp
        else {
            return None;
        };
        if self.collecting.is_none() && next.is_none() && Some(digest) == self.known {
            return Some(PagerStep::Done(None, digest));
        }
        match &mut self.collecting {
            Some((d, got)) if *d == digest => got.extend(members),
            Some(_) if self.restarts < MAX_RESTARTS => {
                // The list changed under us: start over, so what we hold is one list.
                self.restarts += 1;
                self.collecting = None;
                return Some(PagerStep::Ask(Request::CMembersPage {
                    after: None,
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
        match next {
            Some(after) => Some(PagerStep::Ask(Request::CMembersPage {
                after: Some(after),
                digest: None,
            })),
            None => {
                let (d, mut list) = self.collecting.take().expect("collecting");
                list.sort_by_key(|n| n.key.id);
                list.dedup_by_key(|n| n.key.id);
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

    #[test]
    fn something_other_than_a_page_is_not_taken_for_one() {
        assert_eq!(Pager::new(None).on_page(Response::Ok), None);
    }
}
