//! Finding 7: a wrong password for an account whose hash has older (cheaper)
//! scrypt parameters takes as long as a login of an unknown name.

use std::time::{Duration, Instant};

use crate::harness::DataDir;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn wrong_password_for_an_old_hash_takes_as_long_as_an_unknown_name() {
    let dir = DataDir::new();
    let mut cheap = super::server()
        .dir(&dir)
        .env("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", 10)
        .start();
    cheap.register("oldparams").await.ok(201);
    assert!(cheap.terminate().success());

    let s = super::server()
        .dir(&dir)
        .env("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", 14)
        // A hash at log_n 14 takes a good part of a second in a debug build.
        .env("GATEHOUSE__SERVER__REQUEST_TIMEOUT_MS", 30_000)
        .start();
    // One of each first, so neither kind pays for a cold start.
    s.login("oldparams", "wrong password 0")
        .await
        .expect(401, "AUTH001");
    s.login("nobody-warmup", "wrong password 0")
        .await
        .expect(401, "AUTH001");

    // The padding target is the median of recent verifications, so it lags
    // when the machine's load changes (the other tests come and go): a round
    // disturbed that way is measured again. Without the padding every round
    // is far off (4 ms against 70 ms in a release build).
    let mut rounds = Vec::new();
    for round in 0..3 {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..15 {
            let password = format!("wrong password {round}-{i}");
            let started = Instant::now();
            s.login("oldparams", &password).await.expect(401, "AUTH001");
            known.push(started.elapsed());
            let started = Instant::now();
            s.login(&format!("nobody-{round}-{i}"), &password)
                .await
                .expect(401, "AUTH001");
            unknown.push(started.elapsed());
        }
        let (k, u) = (median(known.clone()), median(unknown.clone()));
        let ratio = k.min(u).as_secs_f64() / k.max(u).as_secs_f64();
        if ratio >= 0.6 {
            return;
        }
        rounds.push(format!(
            "median wrong password {k:?} vs unknown name {u:?} (ratio {ratio:.2}); \
             samples {known:?} / {unknown:?}"
        ));
    }
    panic!("no round within 0.6: {rounds:#?}");
}
