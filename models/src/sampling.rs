//! Choosing the next token from a row of logits.
//!
//! The pipeline follows llama.cpp's default order: repetition penalty on the raw
//! logits, then greedy argmax, or temperature, softmax, top-k, top-p, min-p and a draw
//! from the renormalised survivors. The random source is a seeded xoshiro256** so the
//! same seed and the same logits always give the same tokens, on every platform.

/// A sampling configuration that cannot be used, with the value found and the range
/// expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplingError {
    /// A numeric parameter is outside its range.
    #[error("sampling parameter {name} = {found}: expected {expected}")]
    OutOfRange {
        /// The parameter's name, as the command line spells it.
        name: &'static str,
        /// The value that was given.
        found: f32,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// The logits row is empty or holds only NaN or negative infinity.
    #[error("no token can be sampled from {len} logits: none is finite")]
    NoCandidate {
        /// Length of the logits row.
        len: usize,
    },
}

/// How to pick tokens. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects the argmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities sum to at least `top_p`;
    /// 1 keeps all.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the best one's; 0 keeps all.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this;
    /// 1 disables the penalty.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random source.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token, no penalty.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
    };

    /// Checks every parameter against its range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let checks: [(&'static str, f32, bool, &'static str); 4] = [
            (
                "temperature",
                self.temperature,
                self.temperature >= 0.0 && self.temperature.is_finite(),
                "a finite value >= 0",
            ),
            (
                "top-p",
                self.top_p,
                self.top_p > 0.0 && self.top_p <= 1.0,
                "a value in (0, 1]",
            ),
            (
                "min-p",
                self.min_p,
                (0.0..=1.0).contains(&self.min_p),
                "a value in [0, 1]",
            ),
            (
                "repeat-penalty",
                self.repeat_penalty,
                self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite(),
                "a finite value > 0",
            ),
        ];
        for (name, found, ok, expected) in checks {
            if !ok {
                return Err(SamplingError::OutOfRange {
                    name,
                    found,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// True when sampling always takes the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

impl Default for SamplingParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64: small, fast and
/// identical everywhere, which is what reproducible sampling needs. Not for secrets.
#[derive(Debug, Clone)]
pub struct Xoshiro256 {
    state: [u64; 4],
}

impl Xoshiro256 {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform value in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A token sampler for one sequence: parameters plus its own random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256,
    /// Reused buffer of (token, probability) candidates, so a step does not allocate.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler with validated parameters, its random state seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            params,
            rng: Xoshiro256::seed_from_u64(params.seed),
            candidates: Vec::new(),
        })
    }

    /// The parameters this sampler uses.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one per vocabulary entry), given the tokens
    /// of the sequence so far (`history`, for the repetition penalty). `logits` is
    /// modified in place by the penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplingError> {
        let recent = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        apply_repeat_penalty(logits, recent, self.params.repeat_penalty);
        if self.params.is_greedy() {
            return argmax(logits).ok_or(SamplingError::NoCandidate { len: logits.len() });
        }
        self.fill_candidates(logits)?;
        truncate_top_k(&mut self.candidates, self.params.top_k);
        truncate_top_p(&mut self.candidates, self.params.top_p);
        truncate_min_p(&mut self.candidates, self.params.min_p);
        Ok(draw(&self.candidates, self.rng.next_f64()))
    }

    /// Softmax of `logits / temperature` into `candidates`, sorted by falling
    /// probability (ties by token id, so the order never depends on the sort).
    fn fill_candidates(&mut self, logits: &[f32]) -> Result<(), SamplingError> {
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Err(SamplingError::NoCandidate { len: logits.len() });
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        let mut total = 0.0f64;
        for (id, &l) in (0u32..).zip(logits) {
            if l.is_finite() {
                let p = ((l - max) * inv_t).exp();
                total += f64::from(p);
                self.candidates.push((id, p));
            }
        }
        let inv_total = (1.0 / total) as f32;
        for c in &mut self.candidates {
            c.1 *= inv_total;
        }
        self.candidates
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(())
    }
}

/// Index of the largest finite logit (the first one on ties), or `None` if there is
/// none.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for (id, &l) in (0u32..).zip(logits) {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((id, l));
        }
    }
    best.map(|(id, _)| id)
}

/// The `k` largest logits as `(id, logit)`, largest first (ties by lower id).
pub fn top_k_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = (0u32..).zip(logits.iter().copied()).collect();
    all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// CTRL-style repetition penalty: each distinct recent token's logit is divided by
/// `penalty` when positive and multiplied by it when negative.
fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen: Vec<u32> = recent.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = usize::try_from(id).ok().and_then(|i| logits.get_mut(i)) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

fn truncate_top_k(candidates: &mut Vec<(u32, f32)>, k: usize) {
    if k > 0 {
        candidates.truncate(k);
    }
}

/// Keeps the shortest prefix whose probability mass reaches `p` (at least one).
fn truncate_top_p(candidates: &mut Vec<(u32, f32)>, p: f32) {
    if p >= 1.0 {
        return;
    }
    let total: f32 = candidates.iter().map(|c| c.1).sum();
    let mut mass = 0.0;
    let mut keep = candidates.len();
    for (i, c) in candidates.iter().enumerate() {
        mass += c.1;
        if mass >= p * total {
            keep = i + 1;
            break;
        }
    }
    candidates.truncate(keep);
}

/// Drops candidates below `min_p` times the most likely one (the first).
fn truncate_min_p(candidates: &mut Vec<(u32, f32)>, min_p: f32) {
    let Some(&(_, best)) = candidates.first() else {
        return;
    };
    let floor = best * min_p;
    let keep = candidates.iter().take_while(|c| c.1 >= floor).count();
    candidates.truncate(keep.max(1));
}

/// Inverse-CDF draw over the (unnormalised) candidate weights with `u` in `[0, 1)`.
fn draw(candidates: &[(u32, f32)], u: f64) -> u32 {
    let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
    let target = u * total;
    let mut acc = 0.0f64;
    for &(id, p) in candidates {
        acc += f64::from(p);
        if target < acc {
            return id;
        }
    }
    // Rounding can leave `target` just above the last sum: take the last candidate.
    candidates.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random logits with distinct values.
    fn logits(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = Xoshiro256::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
            .collect()
    }

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    fn draws(p: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p).unwrap();
        (0..n)
            .map(|_| s.sample(&mut logits.to_vec(), &[]).unwrap())
            .collect()
    }

    #[test]
    fn greedy_is_argmax() {
        for seed in 0..20 {
            let l = logits(seed, 1000);
            let best = l
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            assert_eq!(draws(SamplingParams::GREEDY, &l, 3), vec![best; 3]);
        }
    }

    #[test]
    fn top_k_never_leaves_the_top_k() {
        let l = logits(1, 500);
        let top: Vec<u32> = top_k_logits(&l, 5).iter().map(|c| c.0).collect();
        let got = draws(params(5.0, 5, 1.0, 0.0), &l, 2000);
        assert!(got.iter().all(|t| top.contains(t)), "{got:?} vs {top:?}");
        // A hot temperature over five survivors visits more than one of them.
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let l = logits(2, 300);
        let p = params(2.0, 0, 1.0, 0.0);
        assert_eq!(draws(p, &l, 200), draws(p, &l, 200));
        let other = SamplingParams { seed: 8, ..p };
        assert_ne!(draws(p, &l, 200), draws(other, &l, 200));
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best() {
        let l = logits(3, 300);
        let best = argmax(&l).unwrap();
        assert!(draws(params(1.0, 0, 1e-6, 0.0), &l, 100)
            .iter()
            .all(|&t| t == best));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        let mut c = vec![(0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)];
        truncate_top_p(&mut c, 0.8);
        assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn min_p_drops_tokens_below_the_fraction_of_the_best() {
        let mut c = vec![(4, 0.6), (1, 0.3), (2, 0.07), (3, 0.03)];
        truncate_min_p(&mut c, 0.1);
        assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4, 1, 2]);
        // With min-p the sampler never returns a token under the floor.
        let l = logits(4, 200);
        let max = l.iter().copied().fold(f32::MIN, f32::max);
        for t in draws(params(1.0, 0, 1.0, 0.5), &l, 500) {
            // p(t) / p(best) = exp(l_t - l_max) >= 0.5
            assert!((l[t as usize] - max).exp() >= 0.5 - 1e-6);
        }
    }

    #[test]
    fn repeat_penalty_moves_seen_tokens_down() {
        let mut l = vec![2.0, -1.0, 1.5, 0.5];
        apply_repeat_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -2.0, 1.5, 0.5]);
        // Greedy with a penalty picks the runner-up once the best was seen.
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::GREEDY
        };
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample(&mut [2.0, -1.0, 1.5], &[0]).unwrap(), 2);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.75 and 0.25 at temperature 1.
        let l = vec![3f32.ln(), 0.0];
        let got = draws(params(1.0, 0, 1.0, 0.0), &l, 20_000);
        let zeros = got.iter().filter(|&&t| t == 0).count() as f64 / got.len() as f64;
        assert!((zeros - 0.75).abs() < 0.02, "frequency of token 0: {zeros}");
    }

    #[test]
    fn invalid_parameters_and_logits_are_refused() {
        for bad in [
            params(-1.0, 0, 1.0, 0.0),
            params(f32::NAN, 0, 1.0, 0.0),
            params(1.0, 0, 0.0, 0.0),
            params(1.0, 0, 1.0, 1.5),
        ] {
            assert!(Sampler::new(bad).is_err(), "{bad:?}");
        }
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0)).unwrap();
        let err = s
            .sample(&mut [f32::NAN, f32::NEG_INFINITY], &[])
            .unwrap_err();
        assert_eq!(err, SamplingError::NoCandidate { len: 2 });
        assert!(s.sample(&mut [], &[]).is_err());
    }

    #[test]
    fn xoshiro_matches_reference_output() {
        // First outputs of xoshiro256** from state [1, 2, 3, 4] (reference C code).
        let mut r = Xoshiro256 {
            state: [1, 2, 3, 4],
        };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1509978240);
        assert_eq!(r.next_u64(), 1215971899390074240);
    }
}
