//! Which pair carries the call (RFC 8445 §8): nomination by the controlling agent,
//! selection on both sides, the standby kept fresh for a fallback.

use super::*;
use crate::call::ice::types::ChangeReason;

impl IceAgent {
    /// Controlling: nominates `id` with a fresh NOMINATION value, ahead of other checks.
    pub(super) fn nominate(&mut self, id: u32) {
        self.nomination += 1;
        self.nominating = Some(id);
        self.enqueue_triggered(id, Some(self.nomination));
    }

    pub(super) fn alive(&self, id: u32, now: Instant) -> bool {
        self.pairs.get(&id).is_some_and(|p| {
            p.state == State::Succeeded
                && p.last_response
                    .is_some_and(|t| now < t + self.consent_timeout_of(p))
        })
    }

    /// When the relay grace ends, while it matters (controlling, nothing selected) and is
    /// still ahead.
    pub(super) fn grace_end(&self) -> Option<Instant> {
        if !self.controlling || self.selected.is_some() {
            return None;
        }
        self.checks_started
            .map(|t| t + self.timing.relay_grace)
            .filter(|t| self.last_now.is_none_or(|n| *t > n))
    }

    /// Whether a direct pair of the current session may still come to work.
    pub(super) fn direct_pending(&self) -> bool {
        let g = self.sess.id;
        self.pairs.values().any(|p| {
            p.sess == g && !p.relayed() && matches!(p.state, State::Waiting | State::InProgress)
        })
    }

    /// The pair the controlling agent wants: the best working direct pair of the current
    /// session; a relayed one only once direct pairs had `relay_grace` or all failed.
    pub(super) fn want(&self, now: Instant) -> Option<u32> {
        let g = self.sess.id;
        let best = |relayed: bool| {
            self.pairs
                .iter()
                .filter(|(id, p)| p.sess == g && p.relayed() == relayed && self.alive(**id, now))
                .max_by_key(|(_, p)| (p.priority, p.validated))
                .map(|(id, _)| *id)
        };
        if let Some(d) = best(false) {
            return Some(d);
        }
        let grace_over = self
            .checks_started
            .is_some_and(|t| now >= t + self.timing.relay_grace);
        best(true).filter(|_| grace_over || !self.direct_pending())
    }

    /// Recomputes the selected and standby pairs.
    pub(super) fn evaluate(&mut self, now: Instant) {
        let rule = |p: &Pair| (p.nominated, p.priority, p.validated);
        let nominated_alive = self
            .pairs
            .iter()
            .filter(|(id, p)| p.nominated.is_some() && self.alive(**id, now))
            .max_by_key(|(_, p)| rule(p))
            .map(|(id, _)| *id);
        let selected = if self.controlling {
            let want = self.want(now);
            if let Some(w) = want {
                // What the peer would pick by the same rule, counting pairs we know are dead
                // (it may not know yet): if that is not our choice, renominate.
                let peer_view = self
                    .pairs
                    .iter()
                    .filter(|(_, p)| p.nominated.is_some())
                    .max_by_key(|(_, p)| rule(p))
                    .map(|(id, _)| *id);
                if peer_view != Some(w) && self.nominating != Some(w) {
                    self.nominate(w);
                }
            }
            // We use our choice once the peer has been told of it (an answered USE-CANDIDATE
            // check), or at once when the path in use died; a nomination that a better pair
            // overtook in flight does not move us.
            let current = self.selected.filter(|s| self.alive(*s, now));
            match want {
                Some(w) if self.pairs[&w].nominated.is_some() || current.is_none() => Some(w),
                _ => current.or(nominated_alive),
            }
        } else {
            // A controlled agent follows the nomination; when everything nominated died it
            // falls back on its own to the best working pair until the peer decides.
            nominated_alive.or_else(|| {
                self.selected?;
                let g = self.sess.id;
                self.pairs
                    .iter()
                    .filter(|(id, p)| p.sess == g && self.alive(**id, now))
                    .max_by_key(|(_, p)| (!p.relayed(), p.priority))
                    .map(|(id, _)| *id)
            })
        };
        self.select(now, selected);
        self.pick_standby(now);
    }

    pub(super) fn select(&mut self, now: Instant, new: Option<u32>) {
        if new == self.selected && self.lost.is_none() {
            return;
        }
        let old = self.selected;
        let lost = self.lost.take();
        let old_info = old.map(|o| self.info(o)).or(lost);
        self.selected = new;
        match new {
            Some(n) => {
                let to = self.info(n);
                let pair = self.pairs.get_mut(&n).expect("selected exists");
                if pair.consent_next.is_none() {
                    pair.consent_next =
                        Some(now + jittered(&mut self.rng, &self.timing, pair.relayed()));
                }
                let reason = match old {
                    Some(o)
                        if self
                            .pairs
                            .get(&o)
                            .is_some_and(|p| p.sess != self.pairs[&n].sess) =>
                    {
                        ChangeReason::Restart
                    }
                    Some(o) if !self.alive(o, now) => ChangeReason::ConsentLost,
                    None if lost.is_some() => ChangeReason::ConsentLost,
                    _ if self.controlling => ChangeReason::Better,
                    _ => ChangeReason::PeerNominated,
                };
                match old_info {
                    Some(from) => self
                        .events
                        .push_back(Event::PathChanged { from, to, reason }),
                    None => self.events.push_back(Event::Connected(to)),
                }
                // A pair of the new session is selected: the old session is over.
                if self.pairs[&n].sess == self.sess.id
                    && let Some(prev) = self.prev.take()
                {
                    let old_pairs: Vec<u32> = self
                        .pairs
                        .iter()
                        .filter(|(_, p)| p.sess == prev.id)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in old_pairs {
                        self.remove_pair(id);
                    }
                    self.remotes.retain(|r| r.sess != prev.id);
                }
            }
            None => {
                self.events.push_back(Event::Disconnected);
                // Retry every pair of the session: a path may come back, or a fresh punch
                // may find one.
                let g = self.sess.id;
                let retry: Vec<u32> = self
                    .pairs
                    .iter()
                    .filter(|(_, p)| p.sess == g && p.state != State::InProgress)
                    .map(|(id, _)| *id)
                    .collect();
                for id in retry {
                    self.pairs.get_mut(&id).expect("listed").state = State::Waiting;
                }
            }
        }
        if let Some(o) = old
            && Some(o) != self.standby
            && let Some(p) = self.pairs.get_mut(&o)
        {
            p.consent_next = None;
        }
    }

    /// The standby: the best other working pair, kept fresh by consent so a fallback is known
    /// to work. Preferred, in order: one that shares no relay with the selected pair (a dead
    /// relay must not take the standby with it: with a standby relay allocation, its pairs
    /// qualify), then one of the other kind (relayed or direct), then priority.
    pub(super) fn pick_standby(&mut self, now: Instant) {
        let new = self.selected.and_then(|s| {
            let sel = &self.pairs[&s];
            let sel_relayed = sel.relayed();
            let g = sel.sess;
            self.pairs
                .iter()
                .filter(|(id, p)| **id != s && p.sess == g && self.alive(**id, now))
                .max_by_key(|(_, p)| (!p.shares_relay(sel), p.relayed() != sel_relayed, p.priority))
                .map(|(id, _)| *id)
        });
        self.fallback = match (self.selected, new) {
            (Some(s), Some(n)) => !self.pairs[&n].shares_relay(&self.pairs[&s]),
            _ => false,
        };
        if new == self.standby {
            return;
        }
        if let Some(o) = self.standby
            && Some(o) != self.selected
            && let Some(p) = self.pairs.get_mut(&o)
        {
            p.consent_next = None;
        }
        self.standby = new;
        if let Some(n) = new {
            let t = now + jittered(&mut self.rng, &self.timing, self.pairs[&n].relayed());
            let p = self.pairs.get_mut(&n).expect("standby exists");
            p.consent_next.get_or_insert(t);
        }
    }

    pub(super) fn info(&self, id: u32) -> PathInfo {
        let p = &self.pairs[&id];
        let local_kind = match (p.route, p.mapped) {
            (Route::Relay(_), _) => CandidateKind::Relayed,
            (Route::Direct(_), None) => CandidateKind::Host,
            (Route::Direct(base), Some(m)) if m == base => CandidateKind::Host,
            (Route::Direct(_), Some(m)) if self.reflexive.iter().any(|c| c.addr == m) => {
                CandidateKind::ServerReflexive
            }
            _ => CandidateKind::PeerReflexive,
        };
        PathInfo {
            route: p.route,
            remote: p.remote,
            local_kind,
            remote_kind: p.remote_kind,
            mapped: p.mapped,
            relayed: p.relayed(),
            rtt: p.rtt,
        }
    }
}
