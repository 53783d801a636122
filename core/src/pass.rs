//! A clearing pass executed as one circulation.
//!
//! The optimum of [`crate::liftable`] is a circulation: a number of units moved on each tally,
//! with every node's inflow equal to its outflow. A pass writes it as such: one [`Move`] per
//! tally (one lift chit on each of its halves), and the [`Circle`]s it decomposes into, kept
//! for audit. Between the plan (made without locks) and the write (under the tallies' locks) a
//! payment may have used some capacity: [`Pass::shrink`] lowers the circles through each tally
//! that can no longer carry its move until every move fits, which keeps the rest a circulation
//! (so no net position moves) and never raises any move. [`Pass::pieces`] cuts a pass into
//! smaller passes, each a circulation of whole circles, for writers that commit a piece at a
//! time.

use crate::error::{Error, Result};
use crate::liftable::Lift;

/// How a pass moves one tally: `debtor` owes `creditor` `units` less (the creditor's half
/// issues the lift chit, its position drops; the debtor's rises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The tally, as the plan's input numbered it.
    pub tally: u32,
    pub debtor: u32,
    pub creditor: u32,
    pub units: i64,
    /// Whether the move uses capacity between the debtor's target and bound.
    pub costed: bool,
}

/// One circle of a pass: `steps` are indexes into [`Pass::moves`], in order around it (each
/// move's creditor is the next one's debtor).
#[derive(Debug, Clone, PartialEq)]
pub struct Circle {
    pub steps: Vec<u32>,
    pub units: i64,
    /// The compounded margin of its steps.
    pub margin: f64,
}

/// A circulation over tallies: the moves, and the circles they are the sum of.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pass {
    pub moves: Vec<Move>,
    pub circles: Vec<Circle>,
}

impl Pass {
    /// The pass of a plan's lifts: one move per tally, carrying every lift that crosses it.
    /// Refuses lifts that cross one tally both ways (a plan nets them; a pass cannot).
    pub fn from_lifts(lifts: &[Lift]) -> Result<Pass> {
        let mut at = std::collections::HashMap::<u32, u32>::new();
        let mut pass = Pass::default();
        for lift in lifts {
            let mut steps = Vec::with_capacity(lift.steps.len());
            for s in &lift.steps {
                let i = *at.entry(s.tally).or_insert_with(|| {
                    pass.moves.push(Move {
                        tally: s.tally,
                        debtor: s.from,
                        creditor: s.to,
                        units: 0,
                        costed: false,
                    });
                    (pass.moves.len() - 1) as u32
                });
                let m = &mut pass.moves[i as usize];
                if (m.debtor, m.creditor) != (s.from, s.to) {
                    return Err(Error::value(format!(
                        "the plan crosses tally {} both ways",
                        s.tally
                    )));
                }
                m.units = m
                    .units
                    .checked_add(lift.units)
                    .ok_or_else(|| Error::value("a move overflows"))?;
                m.costed |= s.costed;
                steps.push(i);
            }
            pass.circles.push(Circle {
                steps,
                units: lift.units,
                margin: lift.margin,
            });
        }
        pass.check()?;
        Ok(pass)
    }

    /// The units moved, over all tallies.
    pub fn moved(&self) -> i128 {
        self.moves.iter().map(|m| i128::from(m.units)).sum()
    }

    /// Checks that the circles close, use each move at most once, have positive units, and
    /// add up to the moves exactly.
    pub fn check(&self) -> Result<()> {
        let mut sum = vec![0i128; self.moves.len()];
        for (k, c) in self.circles.iter().enumerate() {
            if c.units < 1 || c.steps.len() < 2 {
                return Err(Error::value(format!(
                    "circle {k} must have units and at least 2 steps"
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for (j, &s) in c.steps.iter().enumerate() {
                let next = c.steps[(j + 1) % c.steps.len()];
                let (Some(a), Some(b)) =
                    (self.moves.get(s as usize), self.moves.get(next as usize))
                else {
                    return Err(Error::value(format!("circle {k} names no such move")));
                };
                if a.creditor != b.debtor || !seen.insert(s) {
                    return Err(Error::value(format!("circle {k} is not a circle")));
                }
                sum[s as usize] += i128::from(c.units);
            }
        }
        for (i, m) in self.moves.iter().enumerate() {
            if m.debtor == m.creditor || i128::from(m.units) != sum[i] {
                return Err(Error::value(format!(
                    "move {i} is not the sum of its circles"
                )));
            }
        }
        Ok(())
    }

    /// Lowers circles until every move fits its tally's `capacity` now (one per move, in
    /// order), then empties circles left below `min_units`. No move grows, every circle stays a
    /// circle (or empties), so the pass stays a circulation. Circles and moves keep their
    /// places, emptied ones with 0 units, until [`Pass::compact`]. Returns whether anything
    /// changed.
    pub fn shrink(&mut self, capacity: &[i64], min_units: i64) -> Result<bool> {
        if capacity.len() != self.moves.len() {
            return Err(Error::value("one capacity per move"));
        }
        let mut excess: Vec<i64> = self
            .moves
            .iter()
            .zip(capacity)
            .map(|(m, &c)| (m.units - c.max(0)).max(0))
            .collect();
        let low = self.circles.iter().any(|c| c.units < min_units);
        if !low && excess.iter().all(|&e| e == 0) {
            return Ok(false);
        }
        let mut through: Vec<Vec<u32>> = vec![Vec::new(); self.moves.len()];
        for (k, c) in self.circles.iter().enumerate() {
            for &s in &c.steps {
                through[s as usize].push(k as u32);
            }
        }
        for i in 0..self.moves.len() {
            for &k in &through[i] {
                if excess[i] == 0 {
                    break;
                }
                let c = &mut self.circles[k as usize];
                let r = c.units.min(excess[i]);
                c.units -= r;
                for &s in &c.steps {
                    self.moves[s as usize].units -= r;
                    excess[s as usize] = (excess[s as usize] - r).max(0);
                }
            }
        }
        for c in &mut self.circles {
            if c.units > 0 && c.units < min_units {
                for &s in &c.steps {
                    self.moves[s as usize].units -= c.units;
                }
                c.units = 0;
            }
        }
        Ok(true)
    }

    /// Removes the circles and moves [`Pass::shrink`] emptied, renumbering the steps.
    pub fn compact(&mut self) {
        self.circles.retain(|c| c.units > 0);
        let mut new_index = vec![u32::MAX; self.moves.len()];
        let mut kept = Vec::with_capacity(self.moves.len());
        for (i, m) in self.moves.iter().enumerate() {
            if m.units > 0 {
                new_index[i] = kept.len() as u32;
                kept.push(*m);
            }
        }
        self.moves = kept;
        for c in &mut self.circles {
            for s in &mut c.steps {
                *s = new_index[*s as usize];
            }
        }
    }

    /// Cuts the pass into passes of whole circles, each moving at most `max_moves` tallies
    /// (a circle longer than that is a piece of its own), in circle order. Every piece is a
    /// circulation; a tally in several pieces is moved by each.
    pub fn pieces(&self, max_moves: usize) -> Vec<Pass> {
        let mut out: Vec<Pass> = Vec::new();
        let mut at: Vec<u32> = vec![u32::MAX; self.moves.len()];
        let mut piece = Pass::default();
        let mut touched: Vec<u32> = Vec::new();
        for c in &self.circles {
            let new = c
                .steps
                .iter()
                .filter(|&&s| at[s as usize] == u32::MAX)
                .count();
            if !piece.circles.is_empty() && piece.moves.len() + new > max_moves {
                for &s in &touched {
                    at[s as usize] = u32::MAX;
                }
                touched.clear();
                out.push(std::mem::take(&mut piece));
            }
            let mut steps = Vec::with_capacity(c.steps.len());
            for &s in &c.steps {
                if at[s as usize] == u32::MAX {
                    at[s as usize] = piece.moves.len() as u32;
                    touched.push(s);
                    piece.moves.push(Move {
                        units: 0,
                        ..self.moves[s as usize]
                    });
                }
                let i = at[s as usize];
                piece.moves[i as usize].units += c.units;
                steps.push(i);
            }
            piece.circles.push(Circle {
                steps,
                units: c.units,
                margin: c.margin,
            });
        }
        if !piece.circles.is_empty() {
            out.push(piece);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearing::LiftOptions;
    use crate::liftable::{clear, Policy, Tally};
    use proptest::prelude::*;

    fn net_positions(n: usize, p: &Pass) -> Vec<i128> {
        let mut b = vec![0i128; n];
        for m in &p.moves {
            b[m.debtor as usize] += i128::from(m.units);
            b[m.creditor as usize] -= i128::from(m.units);
        }
        b
    }

    fn arb_tallies() -> impl Strategy<Value = (usize, Vec<Tally>)> {
        (3usize..9).prop_flat_map(|n| {
            let t = (0..n as u32, 0..n as u32, -1000i64..1000)
                .prop_filter("two holders", |(a, b, _)| a != b)
                .prop_map(|(stock, foil, net)| Tally {
                    stock,
                    foil,
                    net,
                    ..Default::default()
                });
            (Just(n), prop::collection::vec(t, 1..(3 * n)))
        })
    }

    #[test]
    fn a_triangle_is_one_circle_of_three_moves() {
        let ts = [(1, 0, 5), (2, 1, 3), (0, 2, 7)].map(|(stock, foil, net)| Tally {
            stock,
            foil,
            net,
            ..Default::default()
        });
        let plan = clear(3, &ts, &Policy::default(), LiftOptions::default()).unwrap();
        let mut p = Pass::from_lifts(&plan.lifts).unwrap();
        assert_eq!(p.moves.len(), 3);
        assert!(p.moves.iter().all(|m| m.units == 3));
        assert_eq!(p.moved(), 9);
        // A payment left tally 0 able to carry 1: the circle (and so every move) shrinks to 1.
        let at0 = p.moves.iter().position(|m| m.tally == 0).unwrap();
        let mut cap = vec![100; 3];
        cap[at0] = 1;
        assert!(p.shrink(&cap, 1).unwrap());
        assert!(p.moves.iter().all(|m| m.units == 1));
        p.check().unwrap();
        assert!(!p.shrink(&[100, 100, 100], 1).unwrap(), "everything fits");
        // Below min_units the circle empties, and with it every move.
        assert!(p.shrink(&[100, 100, 100], 2).unwrap());
        assert_eq!(p.circles[0].units, 0);
        p.compact();
        assert!(p.moves.is_empty() && p.circles.is_empty());
    }

    #[test]
    fn a_bad_pass_is_refused() {
        let m = |debtor, creditor, units| Move {
            tally: 0,
            debtor,
            creditor,
            units,
            costed: false,
        };
        let open = Pass {
            moves: vec![m(0, 1, 2), m(1, 2, 2)],
            circles: vec![Circle {
                steps: vec![0, 1],
                units: 2,
                margin: 0.0,
            }],
        };
        assert!(open.check().is_err(), "1 -> 2 does not lead back to 0");
        let short = Pass {
            moves: vec![m(0, 1, 3), m(1, 0, 2)],
            circles: vec![Circle {
                steps: vec![0, 1],
                units: 2,
                margin: 0.0,
            }],
        };
        assert!(short.check().is_err(), "move 0 is more than its circles");
        assert!(
            short.clone().shrink(&[1], 1).is_err(),
            "one capacity per move"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any capacities: shrinking leaves a circulation (no net position moves) whose moves
        /// fit the capacities and never grew, with circles of at least min_units.
        #[test]
        fn shrinking_keeps_a_circulation_within_capacity(
            (n, ts) in arb_tallies(),
            caps in prop::collection::vec(0i64..1200, 40),
            min_units in 1i64..50,
        ) {
            let plan = clear(n, &ts, &Policy::default(), LiftOptions::default()).unwrap();
            let mut p = Pass::from_lifts(&plan.lifts).unwrap();
            prop_assert_eq!(p.moved(), plan.lifts.iter().map(|l| i128::from(l.units) * l.steps.len() as i128).sum::<i128>());
            let before: std::collections::HashMap<u32, i64> = p.moves.iter().map(|m| (m.tally, m.units)).collect();
            let cap: std::collections::HashMap<u32, i64> = p.moves.iter().enumerate().map(|(i, m)| (m.tally, caps[i % caps.len()])).collect();
            let capacity: Vec<i64> = p.moves.iter().map(|m| cap[&m.tally]).collect();
            p.shrink(&capacity, min_units).unwrap();
            p.compact();
            p.check().unwrap();
            prop_assert!(net_positions(n, &p).iter().all(|&b| b == 0));
            for m in &p.moves {
                prop_assert!(m.units <= cap[&m.tally] && m.units <= before[&m.tally] && m.units > 0);
            }
            prop_assert!(p.circles.iter().all(|c| c.units >= min_units));
        }

        /// Pieces are circulations of whole circles that add back up to the pass.
        #[test]
        fn pieces_add_up_to_the_pass((n, ts) in arb_tallies(), max_moves in 1usize..8) {
            let plan = clear(n, &ts, &Policy::default(), LiftOptions::default()).unwrap();
            let p = Pass::from_lifts(&plan.lifts).unwrap();
            let pieces = p.pieces(max_moves);
            let mut total = std::collections::HashMap::<u32, i64>::new();
            let mut circles = 0;
            for q in &pieces {
                q.check().unwrap();
                prop_assert!(q.moves.len() <= max_moves || q.circles.len() == 1);
                prop_assert!(net_positions(n, q).iter().all(|&b| b == 0));
                for m in &q.moves {
                    *total.entry(m.tally).or_default() += m.units;
                }
                circles += q.circles.len();
            }
            prop_assert_eq!(circles, p.circles.len());
            for m in &p.moves {
                prop_assert_eq!(total[&m.tally], m.units);
            }
        }
    }
}
