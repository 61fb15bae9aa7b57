//! Connectivity checks and consent on the wire (RFC 8445 §6.1.4, §7; RFC 7675): answering
//! requests, handling answers, pacing, retransmission and the agent's timers.

use super::*;
use crate::call::ice::wire::{CheckRequest, Request, Response, RoleAttr};

impl IceAgent {
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        route: Route,
        from: SocketAddr,
        req: Request<'_>,
    ) -> Result<(), Refusal> {
        // Which session's credentials: the current one, or the one before a restart.
        let sess = [Some(&self.sess), self.prev.as_ref()]
            .into_iter()
            .flatten()
            .find(|g| g.local.ufrag == req.local_ufrag)
            .ok_or(Refusal::UnknownUfrag)?;
        wire::authenticate(&req.msg, &sess.local.pwd)?;
        if sess
            .remote
            .as_ref()
            .is_some_and(|r| r.ufrag != req.remote_ufrag)
        {
            return Err(Refusal::UnknownUfrag);
        }
        let (sess_id, pwd) = (sess.id, sess.local.pwd.clone());
        let current = sess_id == self.sess.id;
        let known = self
            .remotes
            .iter()
            .any(|r| r.sess == sess_id && r.cand.addr == from);
        if current
            && !known
            && self.remotes.iter().filter(|r| r.sess == sess_id).count()
                >= self.timing.max_remote_candidates
        {
            return Err(Refusal::TooManyCandidates);
        }
        if current && self.role_conflict(req.role) {
            self.counters.role_conflicts += 1;
            let data = wire::role_conflict(req.msg.raw_id(), &pwd);
            self.transmits.push_back(Transmit {
                route,
                to: from,
                data,
            });
            return Ok(());
        }
        // Answer at once (responses are not paced): the source authenticated itself.
        self.counters.requests_answered += 1;
        let data = wire::success(req.msg.raw_id(), from, &pwd);
        self.transmits.push_back(Transmit {
            route,
            to: from,
            data,
        });
        if !current {
            return Ok(()); // the old session's pair only needs answers
        }
        let r = match self
            .remotes
            .iter()
            .position(|r| r.sess == sess_id && r.cand.addr == from)
        {
            Some(r) => r,
            None => {
                // A peer-reflexive candidate (RFC 8445 §7.3.1.3): its priority is the one the
                // request carries; its foundation just has to be unique.
                self.counters.prflx_learned += 1;
                let foundation = 0x8000_0000 | self.next_foundation;
                self.next_foundation += 1;
                self.remotes.push(Remote {
                    cand: Candidate {
                        kind: CandidateKind::PeerReflexive,
                        addr: from,
                        priority: req.priority,
                        foundation,
                    },
                    sess: sess_id,
                });
                self.remotes.len() - 1
            }
        };
        let local_priority = self
            .locals
            .iter()
            .find(|l| l.route == route)
            .map_or(0, |l| l.cand.priority);
        let Some(id) = self.pair_up(route, local_priority, r) else {
            return Ok(());
        };
        // Triggered check (RFC 8445 §7.3.1.4): the answer to the peer's punch.
        let alive = self.alive(id, now);
        let pair = self.pairs.get_mut(&id).expect("just formed");
        match pair.state {
            State::Succeeded if alive => {}
            State::InProgress => {
                for t in self.txns.iter_mut().filter(|t| t.pair == id) {
                    if matches!(t.kind, TxnKind::Check(_)) {
                        t.next = None;
                    }
                }
                self.enqueue_triggered(id, None);
            }
            _ => {
                pair.state = State::Waiting;
                self.enqueue_triggered(id, None);
            }
        }
        // Nomination (RFC 8445 §7.3.1.5): only a controlled agent obeys it.
        if req.use_candidate && !self.controlling {
            let n = req.nomination.unwrap_or(0);
            self.nomination = self.nomination.max(n);
            let pair = self.pairs.get_mut(&id).expect("formed");
            if alive {
                pair.nominated = pair.nominated.max(Some(n));
            } else {
                pair.pending_nomination = pair.pending_nomination.max(Some(n));
            }
        }
        Ok(())
    }

    /// RFC 8445 §7.3.1.1: returns true when we must answer 487; switches our role when the
    /// peer wins.
    pub(super) fn role_conflict(&mut self, role: RoleAttr) -> bool {
        match (self.controlling, role) {
            (true, RoleAttr::Controlling(t)) => {
                if self.tie_breaker >= t {
                    return true;
                }
                self.switch_role();
            }
            (false, RoleAttr::Controlled(t)) => {
                if self.tie_breaker < t {
                    return true;
                }
                self.switch_role();
            }
            _ => {}
        }
        false
    }

    pub(super) fn switch_role(&mut self) {
        self.controlling = !self.controlling;
        self.nominating = None;
        let c = self.controlling;
        for p in self.pairs.values_mut() {
            p.reprioritize(c);
        }
        self.events.push_back(Event::RoleChanged { controlling: c });
    }

    pub(super) fn on_response(
        &mut self,
        now: Instant,
        route: Route,
        from: SocketAddr,
        resp: Response<'_>,
    ) -> Result<(), Refusal> {
        let Some(i) = self.txns.iter().position(|t| t.id == resp.id) else {
            if self.finished.contains(&resp.id) {
                self.counters.late_responses += 1;
                return Ok(());
            }
            return Err(Refusal::UnknownTransaction);
        };
        let sess = self.txns[i].sess;
        let pwd = self
            .creds(sess)
            .and_then(|g| g.remote.as_ref())
            .map(|r| r.pwd.clone())
            .ok_or(Refusal::UnknownTransaction)?;
        wire::authenticate(&resp.msg, &pwd)?;
        if resp.error.is_none() && resp.mapped.is_none() {
            return Err(Refusal::NoMappedAddress);
        }
        let txn = self.txns.remove(i);
        self.finish(txn.id);
        self.counters.responses_received += 1;
        let id = txn.pair;
        let Some(pair) = self.pairs.get(&id) else {
            return Ok(());
        };
        if pair.route != route || pair.remote != from {
            // RFC 8445 §7.2.5.2.1: a non-symmetric answer fails the check.
            self.counters.non_symmetric += 1;
            if let TxnKind::Check(_) = txn.kind {
                self.pairs.get_mut(&id).expect("checked").state = State::Failed;
            }
            return Ok(());
        }
        if let Some(code) = resp.error {
            if code == 487 && txn.controlling == self.controlling {
                // RFC 8445 §7.2.5.1: the peer holds our role; take the other and retry.
                self.counters.role_conflicts += 1;
                self.switch_role();
                self.enqueue_triggered(id, None);
            } else if let TxnKind::Check(_) = txn.kind {
                self.pairs.get_mut(&id).expect("checked").state = State::Failed;
            }
            return Ok(());
        }
        let mapped = resp.mapped.expect("checked above");
        if txn.sends == 1 {
            // Karn: only an unretransmitted request gives an unambiguous round trip.
            let rtt = now.saturating_duration_since(txn.sent);
            self.rtt.sample(rtt);
            self.pairs.get_mut(&id).expect("checked").rtt = Some(rtt);
        }
        let pair = self.pairs.get_mut(&id).expect("checked");
        if let (Route::Direct(local), Some(old)) = (route, pair.mapped)
            && old != mapped
        {
            // Our NAT gave the socket a new mapping towards this peer.
            self.events.push_back(Event::MappingChanged {
                local,
                from: old,
                to: mapped,
            });
            if self.controlling && self.selected == Some(id) {
                // Renominate the same pair: the peer sees it from the new address, learns a
                // peer-reflexive candidate and moves there (no signalling needed).
                self.nominate(id);
            }
        }
        let valid_local = self.mapped_priority(id, mapped);
        let controlling = self.controlling;
        let pair = self.pairs.get_mut(&id).expect("checked");
        pair.mapped = Some(mapped);
        pair.valid_local_priority = Some(valid_local);
        pair.reprioritize(controlling);
        pair.state = State::Succeeded;
        pair.validated.get_or_insert(now);
        pair.last_response = Some(now);
        if let TxnKind::Check(Some(n)) = txn.kind {
            pair.nominated = pair.nominated.max(Some(n));
            if self.nominating == Some(id) {
                self.nominating = None;
            }
        }
        if let Some(n) = pair.pending_nomination.take() {
            pair.nominated = pair.nominated.max(Some(n));
        }
        // The pair works: other checks on it need no retransmission.
        let done: Vec<TransactionId> = self
            .txns
            .iter()
            .filter(|t| t.pair == id && matches!(t.kind, TxnKind::Check(_)))
            .map(|t| t.id)
            .collect();
        for tid in done {
            self.finish(tid);
        }
        self.txns
            .retain(|t| t.pair != id || !matches!(t.kind, TxnKind::Check(_)));
        Ok(())
    }

    /// Remembers a finished transaction (bounded) so a late answer to it is not refused.
    pub(super) fn finish(&mut self, id: TransactionId) {
        if self.finished.len() == MAX_FINISHED {
            self.finished.pop_front();
        }
        self.finished.push_back(id);
    }

    /// The priority of the local candidate the peer saw on pair `id` (its mapped address):
    /// the host or relayed candidate itself, a server-reflexive one, or the peer-reflexive
    /// priority our checks carry.
    pub(super) fn mapped_priority(&self, id: u32, mapped: SocketAddr) -> u32 {
        let p = &self.pairs[&id];
        if p.route.is_relay() || mapped == p.route.local() {
            return p.local_priority;
        }
        match self.reflexive.iter().find(|c| c.addr == mapped) {
            Some(c) => c.priority,
            None => check_priority(p),
        }
    }

    pub(super) fn enqueue_triggered(&mut self, id: u32, nominate: Option<u32>) {
        if nominate.is_some() {
            self.triggered.retain(|(p, _)| *p != id);
            self.triggered.push_front((id, nominate));
        } else if !self.triggered.iter().any(|(p, _)| *p == id) {
            self.triggered.push_back((id, None));
        }
    }

    pub(super) fn rto(&self) -> Duration {
        self.rtt
            .rto(self.timing.rto_floor, self.timing.initial_rto)
            .min(self.timing.max_rto)
    }

    /// Whether checks on pairs of session `sess` can be sent (the peer's credentials are known).
    pub(super) fn can_check(&self, sess: u32) -> bool {
        self.creds(sess).is_some_and(|g| g.remote.is_some())
    }

    /// Whether a paced check could go out if the pace allowed.
    pub(super) fn paced_work_waiting(&self) -> bool {
        let ready = |sess: u32| self.can_check(sess);
        self.triggered
            .iter()
            .any(|(p, _)| self.pairs.get(p).is_some_and(|p| ready(p.sess)))
            || (ready(self.sess.id)
                && self
                    .pairs
                    .values()
                    .any(|p| p.sess == self.sess.id && p.state == State::Waiting))
    }

    pub(super) fn drive(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.expire(now);
        self.consent_deadlines(now);
        self.evaluate(now);
        for p in [self.selected, self.standby].into_iter().flatten() {
            if self.pairs[&p].consent_next.is_some_and(|t| t <= now) {
                self.send_consent(now, p);
            }
        }
        if self.pace_ready.is_none_or(|t| t <= now) && self.paced_send(now) {
            self.pace_ready = Some(now + self.timing.pace);
        }
        self.check_failed();
    }

    /// Gives up on checks, notes missed consent checks, forgets old transactions.
    pub(super) fn expire(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let rto = self.rto();
        for t in &mut self.txns {
            let Some(next) = t.next.filter(|n| *n <= now) else {
                continue;
            };
            match t.kind {
                TxnKind::Check(_) if t.sends >= self.timing.check_sends => {
                    t.next = None;
                    t.expires = now;
                    failed.push(t.pair);
                }
                TxnKind::Check(_) => {} // a retransmission, sent when paced
                TxnKind::Consent => {
                    t.next = None;
                    // Missed: probe again sooner than the regular interval.
                    if let Some(p) = self.pairs.get_mut(&t.pair) {
                        let retry = next + self.timing.consent(p.relayed()).1.saturating_sub(rto);
                        p.consent_next = Some(p.consent_next.map_or(retry, |c| c.min(retry)));
                    }
                }
            }
        }
        let expired: Vec<TransactionId> = self
            .txns
            .iter()
            .filter(|t| t.expires <= now)
            .map(|t| t.id)
            .collect();
        for tid in expired {
            self.finish(tid);
        }
        self.txns.retain(|t| t.expires > now);
        for id in failed {
            let still_checking =
                self.txns.iter().any(|t| {
                    t.pair == id && matches!(t.kind, TxnKind::Check(_)) && t.next.is_some()
                }) || self.triggered.iter().any(|(p, _)| *p == id);
            if let Some(p) = self.pairs.get_mut(&id)
                && p.state == State::InProgress
                && !still_checking
            {
                p.state = State::Failed;
            }
            if self.nominating == Some(id) {
                self.nominating = None;
            }
        }
    }

    /// RFC 7675: a selected or standby pair unanswered for `consent_timeout` loses consent.
    pub(super) fn consent_deadlines(&mut self, now: Instant) {
        for id in [self.selected, self.standby].into_iter().flatten() {
            let p = &self.pairs[&id];
            if p.state == State::Succeeded
                && p.last_response
                    .is_some_and(|t| now >= t + self.consent_timeout_of(p))
            {
                let info = self.info(id);
                let p = self.pairs.get_mut(&id).expect("listed");
                p.state = State::Failed;
                p.consent_next = None;
                self.events.push_back(Event::ConsentLost {
                    path: info,
                    selected: Some(id) == self.selected,
                });
            }
        }
    }

    pub(super) fn send_consent(&mut self, now: Instant, id: u32) {
        let Some(p) = self.pairs.get(&id) else { return };
        let (relayed, timeout) = (p.relayed(), self.consent_timeout_of(p));
        let interval = jittered(&mut self.rng, &self.timing, relayed);
        let rto = self.rto();
        if let Some(t) = self.send_request(now, id, TxnKind::Consent) {
            t.next = Some(now + rto);
            t.expires = now + timeout;
            self.counters.consent_checks += 1;
        }
        if let Some(p) = self.pairs.get_mut(&id) {
            p.consent_next = Some(now + interval);
        }
    }

    /// Sends one paced check: a triggered one, else a due retransmission, else the best
    /// waiting pair (RFC 8445 §6.1.4.2). Returns whether anything was sent.
    pub(super) fn paced_send(&mut self, now: Instant) -> bool {
        self.triggered.retain(|(p, _)| self.pairs.contains_key(p));
        // The first triggered check whose peer credentials are known (the others wait).
        while let Some(i) = self
            .triggered
            .iter()
            .position(|(p, _)| self.can_check(self.pairs[p].sess))
        {
            let (id, nominate) = self.triggered.remove(i).expect("found");
            if nominate.is_none() && self.alive(id, now) {
                continue; // already works
            }
            self.counters.triggered_checks += 1;
            self.start_check(now, id, nominate);
            return true;
        }
        let due = self
            .txns
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                matches!(t.kind, TxnKind::Check(_))
                    && t.sends < self.timing.check_sends
                    && t.next.is_some_and(|n| n <= now)
            })
            .min_by_key(|(_, t)| t.next)
            .map(|(i, _)| i);
        if let Some(i) = due {
            let base = self.rto();
            let t = &mut self.txns[i];
            t.sends += 1;
            t.sent = now;
            t.next = Some(now + self.timing.backoff(base, t.sends));
            t.expires = now + self.timing.late_answer_wait();
            let transmit = Transmit {
                route: self.pairs[&t.pair].route,
                to: self.pairs[&t.pair].remote,
                data: t.bytes.clone(),
            };
            self.transmits.push_back(transmit);
            self.counters.retransmits += 1;
            return true;
        }
        if self.sess.remote.is_none() {
            return false;
        }
        let g = self.sess.id;
        let next = self
            .pairs
            .iter()
            .filter(|(_, p)| p.sess == g && p.state == State::Waiting)
            .max_by_key(|(_, p)| p.priority)
            .map(|(id, _)| *id);
        match next {
            Some(id) => {
                self.start_check(now, id, None);
                true
            }
            None => false,
        }
    }

    /// Starts a check transaction on `id`. A controlling agent nominates aggressively: every
    /// check on a direct pair (and, after the relay grace, on a relayed one) carries
    /// USE-CANDIDATE with the current NOMINATION, so the first answer selects the pair on both
    /// sides without the extra round trip of regular nomination; the controlled agent takes
    /// the highest-priority nominated pair, which is the controlling agent's choice too.
    pub(super) fn start_check(&mut self, now: Instant, id: u32, nominate: Option<u32>) {
        let Some(p) = self.pairs.get(&id) else { return };
        let relayed = p.relayed();
        let nominate = match nominate {
            Some(n) => Some(n),
            None if self.controlling => {
                let grace_over = self
                    .checks_started
                    .is_some_and(|t| now >= t + self.timing.relay_grace);
                (!relayed || grace_over || !self.direct_pending()).then_some(self.nomination)
            }
            None => None,
        };
        self.checks_started.get_or_insert(now);
        // Earlier checks on this pair stop retransmitting; their answers still count.
        for t in self.txns.iter_mut().filter(|t| t.pair == id) {
            if matches!(t.kind, TxnKind::Check(_)) {
                t.next = None;
            }
        }
        let rto = self.rto();
        let max_wait = self.timing.check_lifetime();
        if let Some(t) = self.send_request(now, id, TxnKind::Check(nominate)) {
            t.next = Some(now + rto);
            t.expires = now + max_wait;
            self.counters.checks_sent += 1;
        }
        if let Some(p) = self.pairs.get_mut(&id)
            && p.state != State::Succeeded
        {
            p.state = State::InProgress;
        }
    }

    /// Builds and queues a Binding request on pair `id`; returns its transaction to finish.
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        id: u32,
        kind: TxnKind,
    ) -> Option<&mut Txn> {
        let tid = TransactionId(self.rng.random());
        let p = self.pairs.get(&id)?;
        let sess = self.creds(p.sess)?;
        let remote = sess.remote.as_ref()?;
        let prio = check_priority(p);
        let role = if self.controlling {
            RoleAttr::Controlling(self.tie_breaker)
        } else {
            RoleAttr::Controlled(self.tie_breaker)
        };
        let nominate = match kind {
            TxnKind::Check(n) => n,
            TxnKind::Consent => None,
        };
        let bytes = wire::check_request(&CheckRequest {
            id: tid,
            remote_ufrag: &remote.ufrag,
            remote_pwd: &remote.pwd,
            local_ufrag: &sess.local.ufrag,
            priority: prio,
            role,
            nominate,
        });
        self.transmits.push_back(Transmit {
            route: p.route,
            to: p.remote,
            data: bytes.clone(),
        });
        if self.txns.len() >= MAX_TXNS {
            // Forget the oldest open transaction; its pair's state machine copes with a
            // missing answer like with a lost one.
            let oldest = (0..self.txns.len())
                .min_by_key(|i| self.txns[*i].sent)
                .expect("non-empty");
            self.txns.remove(oldest);
        }
        let sess_id = p.sess;
        self.txns.push(Txn {
            id: tid,
            pair: id,
            kind,
            sess: sess_id,
            controlling: self.controlling,
            bytes,
            sent: now,
            sends: 1,
            next: None,
            expires: now,
        });
        self.txns.last_mut()
    }

    pub(super) fn check_failed(&mut self) {
        if self.failed
            || !self.local_ended
            || !self.remote_ended
            || self.selected.is_some()
            || self.sess.remote.is_none()
            || !self.triggered.is_empty()
        {
            return;
        }
        let busy = self.pairs.values().any(|p| {
            matches!(
                p.state,
                State::Waiting | State::InProgress | State::Succeeded
            )
        });
        if !busy {
            self.failed = true;
            self.events.push_back(Event::Failed);
        }
    }
}

/// PRIORITY of checks on `p` (RFC 8445 §7.2.2): what a peer-reflexive candidate learned from
/// them gets. Through a relay we send the relayed candidate's own priority instead: the address
/// the peer sees is the relay's, and ranking it as peer-reflexive would let a relayed path
/// outrank direct ones.
fn check_priority(p: &Pair) -> u32 {
    if p.route.is_relay() {
        return p.local_priority;
    }
    let lp = ((p.local_priority >> 8) & 0xffff) as u16;
    priority(CandidateKind::PeerReflexive, lp)
}
