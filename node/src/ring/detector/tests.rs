//! Tests of the heartbeat failure detector.

use super::*;
use std::net::{Ipv4Addr, SocketAddr};

/// Peer `n`: id `n` repeated, so ids sort like `n`.
fn peer(n: u8) -> NodeRef {
    NodeRef {
        id: Id([n; 20]),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + u16::from(n))),
    }
}

fn opts(interval: u64, initial_timeout: u64, backoff: Backoff) -> DetectorOptions {
    DetectorOptions {
        interval,
        initial_timeout,
        backoff,
        ..DetectorOptions::default()
    }
}

/// Drives a detector against simulated peers, event by event.
struct Sim {
    det: Detector,
    now: u64,
    /// Answers in flight: (arrival time, send order) → peer.
    inflight: BTreeMap<(u64, u64), Id>,
    sent: u64,
    /// Every verdict, with the time it was given and the peer's timeout at that moment.
    verdicts: Vec<(u64, Verdict, u64)>,
}

impl Sim {
    fn new(opts: DetectorOptions, peers: &[NodeRef]) -> Self {
        let mut det = Detector::new(opts);
        det.monitor(peers.iter().copied(), 0);
        Sim {
            det,
            now: 0,
            inflight: BTreeMap::new(),
            sent: 0,
            verdicts: Vec::new(),
        }
    }

    /// Run until `end`. `delay(peer, probe_number_of_that_peer, sent_at)` says after how many
    /// ms the peer answers a probe, or `None` for silence. Answers due at a time are delivered
    /// before that time's tick, as the call contract asks.
    fn run(&mut self, end: u64, mut delay: impl FnMut(Id, u64, u64) -> Option<u64>) {
        let mut probes: BTreeMap<Id, u64> = BTreeMap::new();
        loop {
            let arrival = self.inflight.keys().next().map(|(at, _)| *at);
            let next = match (arrival, self.det.next_timeout()) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            assert!(next >= self.now, "time went backwards");
            self.now = next;
            while let Some(entry) = self.inflight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let id = entry.remove();
                if let Some(v) = self.det.on_ack(id, self.now) {
                    self.record(v);
                }
            }
            for v in self.det.tick(self.now) {
                self.record(v);
            }
            for node in self.det.poll_probes(self.now) {
                let n = probes.entry(node.id).or_insert(0);
                if let Some(d) = delay(node.id, *n, self.now) {
                    self.inflight.insert((self.now + d, self.sent), node.id);
                }
                *n += 1;
                self.sent += 1;
            }
        }
        self.now = end;
    }

    fn record(&mut self, v: Verdict) {
        let id = match v {
            Verdict::Suspected { peer, .. } | Verdict::Restored { peer, .. } => peer.id,
        };
        self.verdicts.push((self.now, v, self.det.timeout_of(&id)));
    }

    fn suspicions_of(&self, id: Id) -> Vec<(u64, Verdict, u64)> {
        self.verdicts
            .iter()
            .filter(|(_, v, _)| matches!(v, Verdict::Suspected { peer, .. } if peer.id == id))
            .copied()
            .collect()
    }
}

#[test]
fn silent_peer_is_suspected_one_timeout_after_its_first_probe() {
    let mut sim = Sim::new(DetectorOptions::default(), &[peer(1)]);
    sim.run(4_999, |_, _, _| None);
    assert_eq!(
        sim.verdicts.first().map(|(t, v, _)| (*t, *v)),
        Some((
            1_000,
            Verdict::Suspected {
                peer: peer(1),
                cause: Cause::Timeout,
                detection_ms: 1_000
            }
        ))
    );
    assert_eq!(sim.verdicts.len(), 1, "one verdict per suspicion");
    assert!(sim.det.is_suspected(&peer(1).id));
    // A suspected peer is still probed, once per max(interval, timeout): at 0, 1000, ... 4000.
    assert_eq!(sim.det.stats().probes, 5);
}

#[test]
fn peer_that_falls_silent_is_suspected_within_interval_plus_timeout_of_its_last_answer() {
    // (interval, timeout, answer delay, silent from)
    let cases = [
        (500, 1_000, 10, 3_000),
        (500, 1_000, 400, 3_000),
        (500, 1_000, 999, 7_777),
        (2_000, 300, 50, 10_000),
        (100, 5_000, 1_000, 20_001),
    ];
    for (interval, timeout, delay, silent_from) in cases {
        let mut sim = Sim::new(opts(interval, timeout, Backoff::Double), &[peer(1)]);
        let mut last_answer = 0;
        sim.run(silent_from + 3 * (interval + timeout), |_, _, sent| {
            (sent + delay < silent_from).then(|| {
                last_answer = sent + delay;
                delay
            })
        });
        let case = (interval, timeout, delay, silent_from);
        let suspicions = sim.suspicions_of(peer(1).id);
        assert_eq!(suspicions.len(), 1, "case {case:?}: {:?}", sim.verdicts);
        let (at, verdict, _) = suspicions[0];
        assert!(at >= silent_from, "case {case:?}: suspected while alive");
        assert!(
            at - last_answer <= interval + timeout,
            "case {case:?}: suspected at {at}, last answer {last_answer}"
        );
        assert_eq!(
            verdict,
            Verdict::Suspected {
                peer: peer(1),
                cause: Cause::Timeout,
                detection_ms: at - last_answer
            },
            "case {case:?}"
        );
    }
}

#[test]
fn peer_that_always_answers_within_its_timeout_is_never_suspected() {
    // (interval, timeout, answer delays, cycled)
    let cases: [(u64, u64, &[u64]); 5] = [
        (500, 1_000, &[0]),
        (500, 1_000, &[999]),
        (500, 1_000, &[1, 700, 999, 300]),
        (100, 1_000, &[950]),
        (3_000, 200, &[199, 0]),
    ];
    for (interval, timeout, delays) in cases {
        let peers = [peer(1), peer(2), peer(3)];
        let mut sim = Sim::new(opts(interval, timeout, Backoff::Double), &peers);
        sim.run(60_000, |_, n, _| Some(delays[n as usize % delays.len()]));
        assert_eq!(sim.verdicts, [], "case {interval} {timeout} {delays:?}");
        for p in peers {
            assert_eq!(sim.det.timeout_of(&p.id), timeout);
        }
    }
}

#[test]
fn suspected_peer_that_answers_is_restored_and_its_timeout_grows_up_to_max() {
    let cases = [
        (Backoff::Double, vec![2_000, 4_000, 8_000, 10_000, 10_000]),
        (Backoff::Add(3_000), vec![4_000, 7_000, 10_000, 10_000]),
        (Backoff::Add(1), vec![1_001, 1_002, 1_003]),
    ];
    for (backoff, expected) in cases {
        let mut det = Detector::new(opts(500, 1_000, backoff));
        let p = peer(1);
        det.monitor([p], 0);
        let mut now = 0;
        for (round, want) in expected.iter().enumerate() {
            assert_eq!(det.poll_probes(now), [p]);
            let timeout = det.timeout_of(&p.id);
            now += timeout;
            let verdicts = det.tick(now);
            let suspected = matches!(
                verdicts[..],
                [Verdict::Suspected { peer, cause: Cause::Timeout, .. }] if peer == p
            );
            assert!(suspected, "{backoff:?} round {round}: {verdicts:?}");
            now += 100;
            assert_eq!(
                det.on_ack(p.id, now),
                Some(Verdict::Restored {
                    peer: p,
                    false_suspicion: true,
                    suspected_ms: 100
                })
            );
            assert!(!det.is_suspected(&p.id));
            assert_eq!(det.timeout_of(&p.id), *want, "{backoff:?} round {round}");
            // An answer from a peer not suspected is no verdict, and grows nothing.
            assert_eq!(det.on_ack(p.id, now), None);
            assert_eq!(det.timeout_of(&p.id), *want);
            now += 500;
        }
        let rounds = expected.len() as u64;
        assert_eq!(det.stats().suspicions, rounds);
        assert_eq!(det.stats().false_suspicions, rounds);
        assert_eq!(det.peer(&p.id).map(|s| s.false_suspicions), Some(rounds));
    }
}

/// Chandra–Toueg ◇P, eventual strong accuracy: a live peer that always answers after `D` ms,
/// `D > initial_timeout`, is wrongly suspected only until its timeout has grown past `D`.
#[test]
fn false_suspicions_of_a_slow_live_peer_stop_once_its_timeout_exceeds_the_delay() {
    // (interval, backoff, delay D, expected false suspicions)
    let cases = [
        // Probes further apart than D: each round is one probe, as in the textbook.
        (5_000, Backoff::Double, 3_500, 2), // 1000, 2000 suspected; 4000 holds
        (5_000, Backoff::Add(1_000), 3_500, 3), // 1000, 2000, 3000; 4000 holds
        (20_000, Backoff::Double, 9_999, 4), // 1000..8000; capped at 10000 holds
        // Probes closer than D: answers to older probes also show life, so it settles sooner.
        (500, Backoff::Double, 3_500, 1),
        (500, Backoff::Add(500), 3_500, 1),
    ];
    for (interval, backoff, delay, expected) in cases {
        let case = (interval, backoff, delay);
        let mut sim = Sim::new(opts(interval, 1_000, backoff), &[peer(1)]);
        sim.run(200_000, |_, _, _| Some(delay));
        let suspicions = sim.suspicions_of(peer(1).id);
        assert_eq!(
            suspicions.len(),
            expected,
            "case {case:?}: {:?}",
            sim.verdicts
        );
        let stats = sim.det.stats();
        assert_eq!(stats.false_suspicions, stats.suspicions, "case {case:?}");
        assert!(!sim.det.is_suspected(&peer(1).id), "case {case:?}");
        for (at, _, timeout) in suspicions {
            assert!(
                timeout < delay,
                "case {case:?}: suspected at {at} with timeout {timeout}"
            );
        }
    }
}

/// Negative control for the test above: beyond `max_timeout` the peer counts as failed, and
/// is suspected again and again.
#[test]
fn peer_slower_than_max_timeout_is_suspected_forever() {
    let mut sim = Sim::new(opts(20_000, 1_000, Backoff::Double), &[peer(1)]);
    sim.run(400_000, |_, _, _| Some(12_000));
    let suspicions = sim.suspicions_of(peer(1).id);
    assert!(suspicions.len() > 10, "{suspicions:?}");
    assert_eq!(sim.det.timeout_of(&peer(1).id), 10_000);
    assert!(suspicions.last().is_some_and(|(at, _, _)| *at > 350_000));
}

#[test]
fn refused_connection_suspects_at_once_and_a_restart_is_not_a_false_suspicion() {
    let mut det = Detector::new(DetectorOptions::default());
    let p = peer(1);
    det.monitor([p], 0);
    assert_eq!(det.poll_probes(0), [p]);
    assert_eq!(det.on_ack(p.id, 50), None);
    assert_eq!(
        det.on_failure(p.id, 300, true),
        Some(Verdict::Suspected {
            peer: p,
            cause: Cause::Refused,
            detection_ms: 250
        })
    );
    assert!(det.is_suspected(&p.id));
    // No second verdict for the same suspicion, by refusal or by timeout.
    assert_eq!(det.on_failure(p.id, 400, true), None);
    assert_eq!(det.poll_probes(600), [p]);
    assert_eq!(det.tick(1_600), []);
    // It restarted: the suspicion was right, so its timeout stays.
    assert_eq!(
        det.on_ack(p.id, 2_000),
        Some(Verdict::Restored {
            peer: p,
            false_suspicion: false,
            suspected_ms: 1_700
        })
    );
    assert_eq!(det.timeout_of(&p.id), 1_000);
    assert_eq!(det.stats().false_suspicions, 0);
    // A refusal while suspected by timeout upgrades the cause.
    assert_eq!(det.poll_probes(2_500), [p]);
    assert!(matches!(
        det.tick(3_500)[..],
        [Verdict::Suspected {
            cause: Cause::Timeout,
            ..
        }]
    ));
    assert_eq!(det.on_failure(p.id, 3_600, true), None);
    assert!(matches!(
        det.on_ack(p.id, 9_000),
        Some(Verdict::Restored {
            false_suspicion: false,
            ..
        })
    ));
    assert_eq!(det.timeout_of(&p.id), 1_000);
    // Unmonitored peers are ignored.
    assert_eq!(det.on_failure(peer(9).id, 9_000, true), None);
}

#[test]
fn any_message_from_a_peer_postpones_its_next_probe_by_an_interval() {
    let mut det = Detector::new(DetectorOptions::default());
    let p = peer(1);
    det.monitor([p], 0);
    assert_eq!(det.poll_probes(0), [p]);
    assert_eq!(det.on_ack(p.id, 100), None);
    assert_eq!(
        det.poll_probes(500),
        [],
        "heard at 100: next probe due at 600"
    );
    assert_eq!(det.poll_probes(600), [p]);
    det.on_ack(p.id, 650);
    // Traffic the owner sends anyway (stabilize) keeps the peer unprobed, and unsuspected.
    for heard in [1_000, 1_400, 1_800, 2_200] {
        assert_eq!(det.on_ack(p.id, heard), None);
        assert_eq!(det.poll_probes(heard + 1), []);
        assert_eq!(det.tick(heard + 1), []);
    }
    assert_eq!(det.next_timeout(), Some(2_700));
    assert_eq!(det.stats().probes, 2);
}

#[test]
fn transport_error_other_than_refused_only_hastens_the_next_probe() {
    let mut det = Detector::new(DetectorOptions::default());
    let p = peer(1);
    det.monitor([p], 0);
    assert_eq!(det.poll_probes(0), [p]);
    // A probe is outstanding: the error changes nothing, its deadline decides.
    assert_eq!(det.on_failure(p.id, 100, false), None);
    assert_eq!(det.poll_probes(100), []);
    assert_eq!(det.on_ack(p.id, 200), None);
    assert_eq!(det.poll_probes(300), [], "next probe is due at 700");
    // No probe outstanding: the error makes one due at once.
    assert_eq!(det.on_failure(p.id, 300, false), None);
    assert!(!det.is_suspected(&p.id));
    assert_eq!(det.poll_probes(300), [p]);
}

#[test]
fn notice_suspects_a_monitored_peer_only_once_our_own_probe_is_an_interval_overdue() {
    // (probe sent at, answered at, notice at, suspected?, probed at once?)
    let cases = [
        (None, None, 10, false, true),
        (Some(1_000), None, 1_000, false, false),
        (Some(1_000), None, 1_499, false, false),
        (Some(1_000), None, 1_500, true, false),
        (Some(1_000), None, 1_900, true, false),
        // Answered: heard within the interval, so not even an extra probe.
        (Some(1_000), Some(1_010), 1_200, false, false),
        // Answered long ago and not probed since: probed at once, not suspected.
        (Some(1_000), Some(1_010), 9_000, false, true),
    ];
    for (probed, answered, at, suspects, probes) in cases {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        if let Some(sent) = probed {
            assert_eq!(det.poll_probes(sent), [p]);
        }
        if let Some(heard) = answered {
            det.on_ack(p.id, heard);
        }
        let verdict = det.on_notice(p, at);
        let case = (probed, answered, at);
        assert_eq!(det.is_suspected(&p.id), suspects, "case {case:?}");
        if suspects {
            assert_eq!(
                verdict,
                Some(Verdict::Suspected {
                    peer: p,
                    cause: Cause::Notice,
                    detection_ms: at
                }),
                "case {case:?}"
            );
            assert_eq!(det.stats().notices_applied, 1);
            // A second notice is no news.
            assert_eq!(det.on_notice(p, at + 1), None);
            // It answers after all: restored, but our timeout was not at fault.
            assert!(matches!(
                det.on_ack(p.id, at + 2),
                Some(Verdict::Restored {
                    false_suspicion: false,
                    ..
                })
            ));
            assert_eq!(det.timeout_of(&p.id), 1_000);
        } else {
            assert_eq!(verdict, None, "case {case:?}");
            assert_eq!(det.stats().notices_overridden, 1);
            let due: &[NodeRef] = if probes { &[p] } else { &[] };
            assert_eq!(det.poll_probes(at), due, "case {case:?}");
        }
    }
}

/// A stale or buggy node repeating "it is dead" about a neighbour that answers its probes in
/// 50 ms gets nowhere: the neighbour is never suspected, and is probed no more often than once
/// an interval.
#[test]
fn repeated_notices_about_a_live_peer_neither_suspect_it_nor_multiply_its_probes() {
    let opts = DetectorOptions::default();
    let mut det = Detector::new(opts);
    let p = peer(1);
    det.monitor([p], 0);
    let mut answers: Vec<u64> = Vec::new();
    let mut probes = 0;
    for now in (0..20_000).step_by(10) {
        answers.retain(|&at| {
            if at <= now {
                assert_eq!(det.on_ack(p.id, now), None);
            }
            at > now
        });
        assert_eq!(det.tick(now), []);
        for _ in det.poll_probes(now) {
            probes += 1;
            answers.push(now + 50);
        }
        assert_eq!(det.on_notice(p, now), None, "at {now} ms");
    }
    assert!(!det.is_suspected(&p.id));
    assert_eq!(det.stats().notices_applied, 0);
    assert!(probes <= 20_000 / opts.interval + 1, "{probes} probes");
}

#[test]
fn notice_about_an_unmonitored_peer_is_ignored() {
    let mut det = Detector::new(DetectorOptions::default());
    det.monitor([peer(1)], 0);
    assert_eq!(det.on_notice(peer(2), 5_000), None);
    assert!(!det.is_suspected(&peer(2).id));
    assert_eq!(det.stats(), Stats::default());
}

#[test]
fn leaving_the_monitored_set_forgets_the_peer_but_remembers_its_grown_timeout() {
    let mut det = Detector::new(DetectorOptions::default());
    let (a, b) = (peer(1), peer(2));
    det.monitor([a, b], 0);
    assert_eq!(det.poll_probes(0), [a, b]);
    det.on_ack(b.id, 10);
    assert_eq!(det.tick(1_000).len(), 1);
    det.on_ack(a.id, 1_200); // false suspicion: a's timeout is now 2000
    assert_eq!(det.timeout_of(&a.id), 2_000);

    det.monitor([b], 2_000);
    assert!(det.peer(&a.id).is_none());
    assert_eq!(det.monitored().map(|s| s.node).collect::<Vec<_>>(), [b]);
    assert_eq!(det.remembered(), 1, "b stays monitored, a is remembered");
    assert_eq!(det.timeout_of(&a.id), 2_000);
    assert_eq!(det.on_ack(a.id, 2_100), None, "ignored while unmonitored");

    // Back in the set: probed at once, with the remembered timeout.
    det.monitor([a, b], 3_000);
    assert_eq!(det.remembered(), 0);
    assert_eq!(det.poll_probes(3_000), [a, b]);
    assert_eq!(det.peer(&a.id).and_then(|s| s.probe_deadline), Some(5_000));
    // Dropping b, which never grew, leaves nothing to remember.
    det.monitor([a], 3_100);
    assert_eq!(det.remembered(), 0);
    assert_eq!(det.timeout_of(&b.id), 1_000);
}

#[test]
fn late_answer_from_a_peer_forgotten_while_suspected_still_counts_as_false_suspicion() {
    let mut det = Detector::new(DetectorOptions::default());
    let p = peer(1);
    det.monitor([p], 0);
    det.poll_probes(0);
    assert_eq!(det.tick(1_000).len(), 1);
    det.monitor([], 1_000); // the owner dropped it
    assert!(det.is_suspected(&p.id));
    assert_eq!(
        det.on_ack(p.id, 1_700),
        Some(Verdict::Restored {
            peer: p,
            false_suspicion: true,
            suspected_ms: 700
        })
    );
    assert!(!det.is_suspected(&p.id));
    assert_eq!(det.timeout_of(&p.id), 2_000);
    det.monitor([p], 2_000);
    assert_eq!(det.peer(&p.id).map(|s| s.timeout), Some(2_000));
}

#[test]
fn remembered_peer_monitored_again_starts_unsuspected_and_can_be_suspected_again() {
    let mut det = Detector::new(DetectorOptions::default());
    let p = peer(1);
    det.monitor([p], 0);
    det.poll_probes(0);
    assert_eq!(det.tick(1_000).len(), 1);
    det.monitor([], 1_000);
    det.monitor([p], 5_000);
    assert!(!det.is_suspected(&p.id));
    assert_eq!(det.poll_probes(5_000), [p]);
    assert_eq!(
        det.tick(6_000),
        [Verdict::Suspected {
            peer: p,
            cause: Cause::Timeout,
            detection_ms: 1_000
        }]
    );
}

#[test]
fn timeout_memory_is_bounded_and_evicts_the_longest_forgotten() {
    let mut det = Detector::new(DetectorOptions {
        remember: 3,
        ..DetectorOptions::default()
    });
    let peers: Vec<NodeRef> = (1..=5).map(peer).collect();
    let mut now = 0;
    // Give every peer a grown timeout, then forget them one at a time, 5 first.
    det.monitor(peers.iter().copied(), now);
    det.poll_probes(now);
    now += 1_000;
    assert_eq!(det.tick(now).len(), 5);
    for p in &peers {
        det.on_ack(p.id, now);
    }
    for keep in (0..5).rev() {
        now += 1;
        det.monitor(peers[..keep].iter().copied(), now);
    }
    assert_eq!(det.remembered(), 3);
    let timeouts: Vec<u64> = peers.iter().map(|p| det.timeout_of(&p.id)).collect();
    assert_eq!(timeouts, [2_000, 2_000, 2_000, 1_000, 1_000]);
}

#[test]
fn peers_are_probed_and_judged_in_id_order() {
    let mut det = Detector::new(DetectorOptions::default());
    det.monitor([peer(9), peer(3), peer(5), peer(3)], 0);
    assert_eq!(det.poll_probes(0), [peer(3), peer(5), peer(9)]);
    let suspected: Vec<NodeRef> = det
        .tick(1_000)
        .into_iter()
        .filter_map(|v| match v {
            Verdict::Suspected { peer, .. } => Some(peer),
            Verdict::Restored { .. } => None,
        })
        .collect();
    assert_eq!(suspected, [peer(3), peer(5), peer(9)]);
    // Their next probes fell due at 500, held back until the outstanding ones expired.
    assert_eq!(det.next_timeout(), Some(500));
    assert_eq!(det.poll_probes(1_000), [peer(3), peer(5), peer(9)]);
    assert_eq!(det.next_timeout(), Some(2_000));
}

#[test]
fn backoff_grows_capped_and_never_shrinks() {
    let cases = [
        (Backoff::Double, 1_000, 10_000, 2_000),
        (Backoff::Double, 6_000, 10_000, 10_000),
        (Backoff::Double, u64::MAX, u64::MAX, u64::MAX),
        (Backoff::Add(500), 1_000, 10_000, 1_500),
        (Backoff::Add(500), 9_800, 10_000, 10_000),
        (Backoff::Add(500), 12_000, 10_000, 12_000),
    ];
    for (backoff, timeout, max, want) in cases {
        assert_eq!(
            backoff.grow(timeout, max),
            want,
            "{backoff:?} {timeout} {max}"
        );
    }
}

#[test]
#[should_panic(expected = "below initial_timeout")]
fn options_with_max_below_initial_timeout_are_refused() {
    Detector::new(DetectorOptions {
        max_timeout: 10,
        ..DetectorOptions::default()
    });
}

proptest::proptest! {
    /// ◇P accuracy under any schedule: when every probe is answered within `bound` ms
    /// (`bound < max_timeout`), a peer is suspected only while its timeout is below `bound`,
    /// so at most as often as the backoff needs to grow past `bound`.
    #[test]
    fn answers_within_a_bound_stop_suspicions_once_the_timeout_exceeds_it(
        interval in 50u64..3_000,
        initial in 50u64..3_000,
        add in proptest::option::of(1u64..3_000),
        bound in 1u64..9_999,
        delays in proptest::collection::vec(
            proptest::collection::vec(0.0f64..1.0, 1..20),
            1..4,
        ),
    ) {
        let backoff = add.map_or(Backoff::Double, Backoff::Add);
        let o = DetectorOptions {
            interval,
            initial_timeout: initial,
            backoff,
            ..DetectorOptions::default()
        };
        let peers: Vec<NodeRef> = (0..delays.len() as u8).map(peer).collect();
        let mut sim = Sim::new(o, &peers);
        // Every answer takes less than `bound`: the delays are fractions of it, cycled.
        sim.run(300_000, |id, n, _| {
            let d = &delays[usize::from(id.0[0])];
            Some((d[n as usize % d.len()] * bound as f64) as u64 % bound)
        });
        // How many false suspicions it takes the backoff to grow past `bound`.
        let mut steps = 0;
        let mut t = initial;
        while t < bound {
            let grown = backoff.grow(t, o.max_timeout);
            proptest::prop_assert!(grown > t, "{:?} does not grow {}", backoff, t);
            t = grown;
            steps += 1;
        }
        for p in &peers {
            let suspicions = sim.suspicions_of(p.id);
            for (at, _, timeout) in &suspicions {
                proptest::prop_assert!(
                    *timeout < bound,
                    "suspected at {} with timeout {} >= bound {}", at, timeout, bound
                );
            }
            proptest::prop_assert!(
                suspicions.len() <= steps,
                "{} suspicions, {} growth steps to pass {}", suspicions.len(), steps, bound
            );
        }
    }
}
