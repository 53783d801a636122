//! A ring of four sites for distributed lifts (tests/tests/remote.rs, chipsd's lift tests and
//! benchmark): four users per site, tallies u0 -> u1 -> u2 -> u3 inside each site and u3 -> the
//! next site's u0, each one's receiver the vendor.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::{relay_all, Cluster, Site, User};

/// A user of a [`Net`]: (site, index among the site's users).
pub type Who = (usize, usize);

/// One tally half: side, net_good, net_pend, chain length, chain tip.
pub type Half = (String, i64, i64, i32, Vec<u8>);

/// A small federation for lift tests: its sites, their users and the tallies between them.
pub struct Net {
    pub sites: Vec<Site>,
    pub users: Vec<Vec<User>>,
    /// tallies[s]: the tallies site s's users pay over, in the order they were opened (the
    /// ring: tallies[s][i], site s's u_i pays over it; i = 3: to the next site's u0).
    pub tallies: Vec<Vec<Uuid>>,
}

impl Net {
    /// Four sites of four users: tallies u0 -> u1 -> u2 -> u3 inside each site and u3 -> the
    /// next site's u0 (a ring), each one's receiver the vendor, with `target` set by the vendor
    /// (the free lift capacity), except `tight`: (site, tally index) -> target. `ports`: the
    /// sites' agents' ports (where their chipsd would listen).
    pub async fn build(
        tag: &str,
        target: i64,
        tight: Option<((usize, usize), i64)>,
        ports: [u16; 4],
    ) -> Net {
        let names: &[&str] = &["U0", "U1", "U2", "U3"];
        let mut links = Vec::new();
        for k in 0..4 {
            for i in 0..4 {
                let vendor = if i < 3 { (k, i + 1) } else { ((k + 1) % 4, 0) };
                let tg = match tight {
                    Some((at, tg)) if at == (k, i) => tg,
                    _ => target,
                };
                links.push(((k, i), vendor, tg));
            }
        }
        Net::graph(&format!("remote_{tag}"), &ports, &[names; 4], &links, 1).await
    }

    /// Four sites in a diamond, one user each: P (site 0) pays Q (site 3) through A (site 1)
    /// or B (site 2). Tallies P -> A, P -> B (tallies[0]), A -> Q (tallies[1]) and B -> Q
    /// (tallies[2]), each one's receiver the vendor, offering `via_a` on both tallies of the
    /// way through A and `via_b` on the way through B.
    pub async fn diamond(tag: &str, via_a: i64, via_b: i64, ports: [u16; 4]) -> Net {
        Net::graph(
            &format!("diamond_{tag}"),
            &ports,
            &[&["P"], &["A"], &["B"], &["Q"]],
            &[
                ((0, 0), (1, 0), via_a),
                ((0, 0), (2, 0), via_b),
                ((1, 0), (3, 0), via_a),
                ((2, 0), (3, 0), via_b),
            ],
            1000,
        )
        .await
    }

    /// Sites (one per port) with the users named in `users` (cuid: the name in lower case and
    /// the site's number), and tallies `(client, vendor, target)` between users named by (site,
    /// index): the client pays the vendor, who offers `target` (none set when 0) and grants a
    /// credit limit of `limit_times` the target, at least 1,000 (tallies[client site], in order).
    /// With a large `limit_times`, a vendor's target, which it may move, bounds what a lift can
    /// take, not the limit.
    pub async fn graph(
        tag: &str,
        ports: &[u16],
        users: &[&[&str]],
        tallies: &[(Who, Who, i64)],
        limit_times: i64,
    ) -> Net {
        let cluster = Cluster::from_env();
        let mut sites = Vec::new();
        let mut people = Vec::new();
        for (k, port) in ports.iter().enumerate() {
            let s = cluster
                .site(&format!("chips_{tag}_{k}"), *port)
                .await
                .unwrap();
            let mut us = Vec::new();
            for name in users[k] {
                us.push(
                    s.user(name, &format!("{}{k}", name.to_lowercase()))
                        .await
                        .unwrap(),
                );
            }
            people.push(us);
            sites.push(s);
        }
        let all: Vec<&Site> = sites.iter().collect();
        let mut ts = vec![Vec::new(); ports.len()];
        for &((cs, ci), (vs, vi), target) in tallies {
            let (v, c) = (&people[vs][vi], &people[cs][ci]);
            let t = v
                .open_with(c, target.max(1000) * limit_times, &all)
                .await
                .unwrap();
            if target > 0 {
                v.settings(t, json!({"target": target, "bound": target}))
                    .await
                    .unwrap();
            }
            ts[cs].push(t);
        }
        relay_all(&all).await.unwrap();
        quick_lifts(&sites).await;
        Net {
            sites,
            users: people,
            tallies: ts,
        }
    }

    pub fn all(&self) -> Vec<&Site> {
        self.sites.iter().collect()
    }

    /// Relays and ticks until nothing moves.
    pub async fn settle(&self) {
        let all = self.all();
        for _ in 0..50 {
            let r = relay_all(&all).await.unwrap();
            let mut ticked = 0;
            for s in &self.sites {
                let row = s
                    .admin
                    .query_one("SELECT * FROM chips.lift_tick()", &[])
                    .await
                    .unwrap();
                ticked += row.get::<_, i32>(0) + row.get::<_, i32>(1) + row.get::<_, i32>(2);
            }
            if r.applied + r.duplicates == 0 && ticked == 0 {
                return;
            }
        }
        panic!("the sites did not settle");
    }

    /// Settles, waiting out expiries, until no lift is under way at any site.
    pub async fn settle_all(&self) {
        for _ in 0..40 {
            self.settle().await;
            if self.open_lifts().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("lifts stayed under way: {}", self.open_lifts().await);
    }

    pub async fn open_lifts(&self) -> i64 {
        let mut n = 0;
        for s in &self.sites {
            n += s
                .admin
                .query_one(
                    "SELECT count(*) FROM chips.lifts WHERE status IN ('seek', 'pend')",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        n
    }

    /// The status of a lift at each site that has it.
    pub async fn lift_status(&self, lift: Uuid) -> Vec<(usize, String, String)> {
        let mut out = Vec::new();
        for (k, s) in self.sites.iter().enumerate() {
            for r in s
                .admin
                .query(
                    "SELECT status, role FROM chips.lifts WHERE lift_uuid = $1",
                    &[&lift],
                )
                .await
                .unwrap()
            {
                out.push((k, r.get(0), r.get(1)));
            }
        }
        out
    }

    /// Everything agrees: no chit pending, every lift has one status everywhere, both halves of
    /// every tally have the same balance and chain.
    pub async fn check_consistent(&self) {
        // nothing is stuck: a resync of every chain (as chipsd runs now and then) is applied
        // everywhere, and no message is left undelivered
        for s in &self.sites {
            s.admin
                .execute("SELECT chips.chain_sync()", &[])
                .await
                .unwrap();
        }
        let r = relay_all(&self.all()).await.unwrap();
        assert_eq!(r.failed, 0, "a resync was refused");
        for s in &self.sites {
            assert_eq!(s.undelivered().await.unwrap(), 0, "undelivered at {}", s.db);
        }
        let mut status: std::collections::HashMap<Uuid, String> = Default::default();
        let mut halves: std::collections::HashMap<Uuid, Vec<Half>> = Default::default();
        for s in &self.sites {
            let pend: i64 = s
                .admin
                .query_one(
                    "SELECT count(*) FROM chips.chits WHERE status = 'pend'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(pend, 0, "pending chits at {}", s.db);
            for r in s
                .admin
                // (a way the origin gave up for another, its payment living on, is void there:
                // chips._lift_dead, the rule chipsd check uses)
                .query(
                    "SELECT l.lift_uuid, CASE WHEN l.role = 'origin' AND chips._lift_dead(l) THEN 'void' ELSE l.status END \
                     FROM chips.lifts l WHERE l.kind <> 'local' AND l.status <> 'draft'",
                    &[],
                )
                .await
                .unwrap()
            {
                let (l, st): (Uuid, String) = (r.get(0), r.get(1));
                if let Some(prev) = status.insert(l, st.clone()) {
                    assert_eq!(prev, st, "lift {l} is {prev} at one site and {st} at {}", s.db);
                }
            }
            for r in s
                .admin
                .query(
                    "SELECT tally_uuid, side, net_good, net_pend, chain_len, coalesce(chain_tip, digest) \
                     FROM chips.tallies WHERE status = 'open'",
                    &[],
                )
                .await
                .unwrap()
            {
                halves.entry(r.get(0)).or_default().push((
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                ));
            }
        }
        for (t, hs) in halves {
            assert_eq!(hs.len(), 2, "tally {t} has {} halves", hs.len());
            assert_eq!(
                hs[0].1, -hs[1].1,
                "tally {t}: the halves' balances differ: {hs:?}"
            );
            assert_eq!(hs[0].2, hs[0].1, "tally {t}: pending value");
            assert_eq!(
                (hs[0].3, &hs[0].4),
                (hs[1].3, &hs[1].4),
                "tally {t}: chains differ"
            );
        }
    }

    /// Each user's net position: what the partners owe them over all their tallies.
    pub async fn positions(&self) -> Vec<Vec<i64>> {
        let mut out = Vec::new();
        for (k, s) in self.sites.iter().enumerate() {
            let mut ps = Vec::new();
            for u in &self.users[k] {
                ps.push(
                    s.admin
                        .query_one(
                            "SELECT coalesce(sum(net_good), 0)::bigint FROM chips.tallies WHERE ent = $1",
                            &[&u.ent],
                        )
                        .await
                        .unwrap()
                        .get(0),
                );
            }
            out.push(ps);
        }
        out
    }
}

/// Lift timers short enough for tests (a lift lives 3 s).
async fn quick_lifts(sites: &[Site]) {
    for s in sites {
        s.admin
            .execute(
                "SELECT chips.lift_configure(life => '3 seconds', hop_step => '300 ms', \
                 min_window => '200 ms', ask_every => '200 ms', query_life => '2 seconds')",
                &[],
            )
            .await
            .unwrap();
    }
}

pub fn chad(s: &Site, u: &User) -> Value {
    json!({"cuid": u.cuid, "agent": s.agent_id()})
}

/// Pays a CHIP address: the payment document signed by the payer's own key.
pub async fn pay_address(
    payer: &User,
    to: &Value,
    units: i64,
) -> Result<Uuid, tokio_postgres::Error> {
    pay_address_as(&payer.db, &payer.key, to, units).await
}

/// [`pay_address`] on any connection acting as the payer, signed with `key`.
pub async fn pay_address_as(
    db: &tokio_postgres::Client,
    key: &chips_core::sign::KeyPair,
    to: &Value,
    units: i64,
) -> Result<Uuid, tokio_postgres::Error> {
    let lift: Uuid = db
        .query_one(
            "SELECT chips.pay_address($1, $2, 'across sites')",
            &[to, &units],
        )
        .await?
        .get(0);
    let doc: Value = db
        .query_one("SELECT chips.pay_address_json($1)", &[&lift])
        .await?
        .get(0);
    let sig = key.sign_json(&doc).expect("documents are valid JSON");
    db.query_one("SELECT chips.pay_address_sign($1, $2)", &[&lift, &sig])
        .await?;
    Ok(lift)
}
