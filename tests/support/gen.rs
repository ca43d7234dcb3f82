//! The one small seeded generator of the tests: the hostile-input suite (issue #13 point 5),
//! the load generator and the fault schedules.
//!
//! Deterministic on purpose: every run of `cargo test` tries the same inputs, calls and faults,
//! so a failure reproduces from its seed (printed in the assertion, or `FAULT_SEED=n` for the
//! fault schedules) and never comes and goes. SplitMix64 (Steele, Lea, Flood 2014): a few lines,
//! full period, good enough statistics for picking bytes and spreading faults, no dependency
//! (test doubles must not pull crates in for a dozen lines).

/// The seeds every hostile test runs with. More seeds = more cases; each test also prints the
/// seed of a failing case.
pub const SEEDS: std::ops::Range<u64> = 1..201;

#[derive(Debug, Clone)]
pub struct Gen {
    state: u64,
}

impl Gen {
    /// The hostile suite's generator: the seed is mixed first, so that seeds 1, 2, 3… start
    /// far apart.
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03,
        }
    }

    /// The seed used as the state as it is: the load generator and the fault schedules start
    /// so, which keeps the fault seeds already reported (issue #16 soaks) replaying the same
    /// timelines.
    pub fn unmixed(seed: u64) -> Gen {
        Gen { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num`/`den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// Uniform in `[lo, hi)`.
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// True with probability `p`.
    pub fn probability(&mut self, p: f64) -> bool {
        self.range_f64(0.0, 1.0) < p
    }

    /// An index into `weights`, drawn in proportion to them.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // The modulo bias is irrelevant at these sizes.
        let mut x = self.next_u64() % total.max(1);
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `n` arbitrary bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// `n` bytes drawn from `alphabet`.
    pub fn from(&mut self, alphabet: &[u8], n: usize) -> Vec<u8> {
        (0..n).map(|_| *self.pick(alphabet)).collect()
    }

    /// A string of `n` characters from `alphabet`.
    pub fn string(&mut self, alphabet: &str, n: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..n).map(|_| *self.pick(&chars)).collect()
    }

    /// Bytes that stress text parsers: controls, CR/LF, NUL, separators, UTF-8 and broken UTF-8.
    pub fn nasty(&mut self, n: usize) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b":",
            b": ",
            b"=",
            b"&",
            b"%",
            b"%0D%0A",
            b"%zz",
            b"+",
            b"[",
            b"]",
            b";",
            b"#",
            b" ",
            b"\t",
            b"\xff",
            b"\xc3",
            "\u{feff}".as_bytes(),
            "П".as_bytes(),
            "\u{202e}".as_bytes(),
            b"Action: Command",
            b"--END COMMAND--",
            b"Response: Follows",
        ];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.chance(1, 3) {
                let piece: &[u8] = PIECES[self.below(PIECES.len())];
                out.extend_from_slice(piece);
            } else {
                out.push(self.byte());
            }
        }
        out.truncate(n);
        out
    }

    /// One of a few mutations of `data`: flip bytes, cut, insert nasty bytes, duplicate a
    /// slice, or delete one.
    pub fn mutate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        for _ in 0..self.range(1, 8) {
            if v.is_empty() {
                v = self.nasty(8);
            }
            let at = self.below(v.len());
            match self.below(5) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v.truncate(at),
                2 => {
                    let n = self.range(1, 16);
                    let ins = self.nasty(n);
                    v.splice(at..at, ins);
                }
                3 => {
                    let end = (at + self.range(1, 256)).min(v.len());
                    let copy = v[at..end].to_vec();
                    v.splice(at..at, copy);
                }
                _ => {
                    let end = (at + self.range(1, 64)).min(v.len());
                    v.drain(at..end);
                }
            }
        }
        v
    }
}
