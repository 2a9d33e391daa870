//! RMSNorm, RoPE, SwiGLU, softmax and attention against naive f64 references.

mod common;

use chrysalis_kernels::{AttentionShape, Backend};
use common::{assert_close, backends, Rng};

fn ones(len: usize) -> Vec<f64> {
    vec![1.0; len]
}

#[test]
fn rms_norm_matches_the_definition() {
    let mut rng = Rng::new(10);
    for backend in backends() {
        for (n, dim) in [(1, 1), (3, 576), (2, 7)] {
            let x = rng.vec(n * dim);
            let weight = rng.vec(dim);
            let mut out = vec![0f32; n * dim];
            backend.rms_norm(&x, &weight, 1e-5, &mut out).unwrap();
            let mut want = Vec::new();
            for row in x.chunks(dim) {
                let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                want.extend(
                    row.iter()
                        .zip(&weight)
                        .map(|(&v, &w)| f64::from(v) * inv * f64::from(w)),
                );
            }
            assert_close("rms_norm", &out, &want, &ones(want.len()), 1e-5);
        }
    }
}

#[test]
fn rope_rotates_adjacent_pairs_by_position() {
    let mut rng = Rng::new(11);
    let (n_heads, head_dim, theta) = (3, 8, 10000f32);
    for backend in backends() {
        let positions = [0u32, 1, 5, 511];
        let x = rng.vec(positions.len() * n_heads * head_dim);
        let mut got = x.clone();
        backend
            .rope(&mut got, &positions, n_heads, head_dim, theta)
            .unwrap();
        let mut want = Vec::new();
        for (t, &pos) in positions.iter().enumerate() {
            for h in 0..n_heads {
                for i in 0..head_dim / 2 {
                    let at = (t * n_heads + h) * head_dim + 2 * i;
                    let angle =
                        f64::from(pos) * f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64);
                    let (x0, x1) = (f64::from(x[at]), f64::from(x[at + 1]));
                    want.push(x0 * angle.cos() - x1 * angle.sin());
                    want.push(x0 * angle.sin() + x1 * angle.cos());
                }
            }
        }
        // Angles up to 511 rad in f32 carry about 3e-5 absolute error.
        assert_close("rope", &got, &want, &ones(want.len()), 1e-4);
    }
}

#[test]
fn silu_mul_and_softmax_match_their_definitions() {
    let mut rng = Rng::new(12);
    for backend in backends() {
        let mut gate: Vec<f32> = rng.vec(37).iter().map(|v| v * 8.0).collect();
        let up = rng.vec(37);
        let want: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u))
            .collect();
        backend.silu_mul(&mut gate, &up).unwrap();
        assert_close("silu_mul", &gate, &want, &ones(37), 1e-6);

        let mut x: Vec<f32> = rng.vec(1000).iter().map(|v| v * 30.0).collect();
        let max = x.iter().fold(f64::MIN, |m, &v| m.max(f64::from(v)));
        let exps: Vec<f64> = x.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let want: Vec<f64> = exps.iter().map(|e| e / sum).collect();
        backend.softmax(&mut x).unwrap();
        assert_close("softmax", &x, &want, &ones(1000), 1e-6);
    }
}

/// Naive causal grouped-query attention, f64.
fn naive_attention(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let mut out = Vec::new();
    for i in 0..s.n_new {
        for h in 0..s.n_heads {
            let qh = &q[(i * s.n_heads + h) * d..][..d];
            let kv = |j: usize| (j * s.n_kv_heads + h / group) * d;
            let visible = s.first_pos + i + 1;
            let scores: Vec<f64> = (0..visible)
                .map(|j| {
                    let dot: f64 = qh
                        .iter()
                        .zip(&k[kv(j)..kv(j) + d])
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().fold(f64::MIN, |m, &v| m.max(v));
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for e in 0..d {
                out.push(
                    (0..visible)
                        .map(|j| weights[j] / total * f64::from(v[kv(j) + e]))
                        .sum(),
                );
            }
        }
    }
    out
}

#[test]
fn attention_is_causal_grouped_query_attention() {
    let mut rng = Rng::new(13);
    for backend in backends() {
        for (n_new, first_pos, n_heads, n_kv_heads, head_dim) in [
            (1, 0, 1, 1, 4),
            (5, 0, 9, 3, 64),
            (1, 40, 9, 3, 64),
            (3, 7, 4, 4, 5),
            (17, 2, 6, 2, 8),
        ] {
            let shape = AttentionShape {
                n_new,
                first_pos,
                n_heads,
                n_kv_heads,
                head_dim,
            };
            let total = first_pos + n_new;
            let q: Vec<f32> = rng
                .vec(n_new * n_heads * head_dim)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let k = rng.vec(total * n_kv_heads * head_dim);
            let v = rng.vec(total * n_kv_heads * head_dim);
            let mut out = vec![f32::NAN; q.len()];
            backend.attention(shape, &q, &k, &v, &mut out).unwrap();
            let want = naive_attention(shape, &q, &k, &v);
            assert_close(
                &format!("{} attention {shape:?}", backend.name()),
                &out,
                &want,
                &ones(want.len()),
                1e-5,
            );
        }
    }
}
