//! Bad shapes come back as `KernelError`s that name the operand; nothing panics.

mod common;

use chrysalis_kernels::{AttentionShape, Backend, KernelError, WeightFormat, WeightMatrix};
use common::{backends, random_weight, Rng};
use proptest::prelude::*;

#[test]
fn matmul_rejects_mismatched_buffers() {
    let w = random_weight(&mut Rng::new(20), WeightFormat::Q4_1, 8, 64);
    for backend in backends() {
        let err = backend
            .matmul(&w, &[0.0; 63], 1, &mut [0.0; 8])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Shape {
                what: "matmul input x",
                expected: 64,
                found: 63
            }
        );
        let err = backend
            .matmul(&w, &[0.0; 128], 2, &mut [0.0; 8])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Shape {
                what: "matmul output",
                expected: 16,
                found: 8
            }
        );
        let err = backend
            .matmul(&w, &[0.0; 64], usize::MAX, &mut [0.0; 8])
            .unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::Shape {
                    expected: usize::MAX,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn weights_reject_split_blocks_and_wrong_lengths() {
    let err = WeightMatrix::new(WeightFormat::Q8_0, 2, 48, vec![0; 102]).unwrap_err();
    assert!(
        matches!(err, KernelError::BlockAlignment { cols: 48, .. }),
        "{err}"
    );
    let err = WeightMatrix::new(WeightFormat::Q4_1, 2, 64, vec![0; 79]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::WeightBytes {
                expected: 80,
                found: 79,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn element_wise_operations_reject_mismatches() {
    for backend in backends() {
        assert!(matches!(
            backend.rms_norm(&[1.0; 6], &[], 1e-5, &mut [0.0; 6]),
            Err(KernelError::Parameter { .. })
        ));
        assert!(matches!(
            backend.rms_norm(&[1.0; 7], &[1.0; 3], 1e-5, &mut [0.0; 7]),
            Err(KernelError::Parameter { .. })
        ));
        assert!(matches!(
            backend.rms_norm(&[1.0; 6], &[1.0; 3], 1e-5, &mut [0.0; 3]),
            Err(KernelError::Shape { .. })
        ));
        assert!(matches!(
            backend.rope(&mut [0.0; 6], &[0], 2, 3, 1e4),
            Err(KernelError::Parameter { found: 3, .. })
        ));
        assert!(matches!(
            backend.rope(&mut [0.0; 8], &[0, 1], 2, 4, 1e4),
            Err(KernelError::Shape { expected: 16, .. })
        ));
        assert!(matches!(
            backend.silu_mul(&mut [0.0; 4], &[0.0; 5]),
            Err(KernelError::Shape { .. })
        ));
        backend.softmax(&mut []).unwrap();
    }
}

#[test]
fn attention_rejects_bad_heads_and_buffers() {
    for backend in backends() {
        let shape = AttentionShape {
            n_new: 1,
            first_pos: 0,
            n_heads: 4,
            n_kv_heads: 3,
            head_dim: 2,
        };
        let err = backend
            .attention(shape, &[0.0; 8], &[0.0; 6], &[0.0; 6], &mut [0.0; 8])
            .unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::Parameter {
                    what: "attention n_kv_heads",
                    found: 3,
                    ..
                }
            ),
            "{err}"
        );
        let shape = AttentionShape {
            n_kv_heads: 0,
            ..shape
        };
        assert!(backend
            .attention(shape, &[0.0; 8], &[], &[], &mut [0.0; 8])
            .is_err());
        let shape = AttentionShape {
            n_new: 2,
            first_pos: 3,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 2,
        };
        let err = backend
            .attention(shape, &[0.0; 16], &[0.0; 19], &[0.0; 20], &mut [0.0; 16])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Shape {
                what: "attention k",
                expected: 20,
                found: 19
            }
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary (often absurd) shape parameters with small buffers: an error or a
    /// result, never a panic or an attempt to allocate the claimed size.
    #[test]
    fn arbitrary_attention_shapes_never_panic(
        n_new in 0usize..6, first_pos in prop_oneof![0usize..6, Just(usize::MAX)],
        n_heads in 0usize..6, n_kv_heads in 0usize..4, head_dim in prop_oneof![0usize..5, Just(usize::MAX / 2)],
        q_len in 0usize..40, kv_len in 0usize..40,
    ) {
        let shape = AttentionShape { n_new, first_pos, n_heads, n_kv_heads, head_dim };
        let backend = &backends()[0];
        let _ = backend.attention(shape, &vec![0.5; q_len], &vec![0.5; kv_len], &vec![0.5; kv_len], &mut vec![0.0; q_len]);
    }

    #[test]
    fn arbitrary_matmul_and_rope_shapes_never_panic(
        n in prop_oneof![0usize..5, Just(usize::MAX)], x_len in 0usize..200, out_len in 0usize..20,
        positions in 0usize..4, n_heads in 0usize..4, head_dim in prop_oneof![0usize..6, Just(usize::MAX)],
    ) {
        let w = random_weight(&mut Rng::new(21), WeightFormat::Q8_0, 4, 32);
        let backend = &backends()[0];
        let _ = backend.matmul(&w, &vec![1.0; x_len], n, &mut vec![0.0; out_len]);
        let pos: Vec<u32> = (0..positions as u32).collect();
        let _ = backend.rope(&mut vec![1.0; x_len], &pos, n_heads, head_dim, 1e4);
    }
}
