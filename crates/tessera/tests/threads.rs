//! Worker threads: results do not depend on whether idle workers spin or
//! sleep during a run, a failed run leaves the session usable, and runs
//! from several caller threads at once on one session all finish with the
//! right answer (the spinning workers of one run must not hold up another).

use tessera::{Session, SessionOptions};
use tessera_core::Tensor;

fn session(threads: usize, spin: bool, seed: u64) -> Session {
    let g = tessera::demo::encoder_layer(seed).unwrap();
    let opts = SessionOptions {
        threads,
        spin,
        dims: [("batch".to_string(), 2), ("seq".to_string(), 37)].into_iter().collect(),
        ..Default::default()
    };
    Session::from_graph(g, opts).unwrap()
}

fn input(seed: u64) -> Tensor {
    let hidden = tessera::demo::HIDDEN;
    Tensor::from_vec(&[2, 37, hidden], tessera::demo::Rng::new(seed).vec(2 * 37 * hidden, 1.0)).unwrap()
}

fn run(s: &Session, x: &Tensor) -> Vec<f32> {
    let out = s.run(vec![("x".into(), x.clone())]).unwrap();
    out[0].1.as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn spinning_workers_change_no_result() {
    let x = input(3);
    let one = run(&session(1, false, 7), &x);
    for threads in [2, 3] {
        let sleeping = run(&session(threads, false, 7), &x);
        let spinning = session(threads, true, 7);
        // Same work split either way, so the same bits.
        assert_eq!(run(&spinning, &x), sleeping, "{threads} threads");
        assert_eq!(run(&spinning, &x), sleeping, "{threads} threads, second run");
        for (a, b) in sleeping.iter().zip(&one) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{threads} threads against 1: {a} vs {b}");
        }
    }
}

#[test]
fn a_failed_run_leaves_the_session_usable() {
    let s = session(2, true, 5);
    let x = input(1);
    let want = run(&s, &x);
    let err = s.run(vec![("not_an_input".into(), x.clone())]).unwrap_err();
    assert!(err.to_string().contains("missing input 'x'"), "{err}");
    let short = Tensor::from_vec(&[1, 2, 3], vec![0.0; 6]).unwrap();
    assert!(s.run(vec![("x".into(), short)]).is_err());
    assert_eq!(run(&s, &x), want);
}

#[test]
fn concurrent_runs_on_one_session_all_finish_right() {
    let s = session(3, true, 9);
    let inputs: Vec<Tensor> = (0..4).map(input).collect();
    let want: Vec<Vec<f32>> = inputs.iter().map(|x| run(&s, x)).collect();
    std::thread::scope(|scope| {
        for (x, w) in inputs.iter().zip(&want) {
            let s = &s;
            scope.spawn(move || {
                for _ in 0..5 {
                    assert_eq!(&run(s, x), w);
                }
            });
        }
    });
}

/// Back-to-back runs, where a run's pollers could outlive it and pick up
/// the next run's jobs (an early form of the poller hung this way within a
/// few hundred BERT runs): each run must finish, checked by a watchdog.
#[test]
fn many_back_to_back_runs_finish() {
    let s = session(2, true, 11);
    let x = input(2);
    let want = run(&s, &x);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..1500 {
                assert_eq!(run(&s, &x), want);
            }
            done_tx.send(()).unwrap();
        });
        assert!(done_rx.recv_timeout(std::time::Duration::from_secs(240)).is_ok(), "runs stopped finishing: a hang");
    });
}
