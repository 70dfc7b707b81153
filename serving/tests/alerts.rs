//! The alert routes over the embedded bus: alert states from `weir.alerts`, silences made over
//! HTTP reaching every process that follows `weir.alerts.silences`, expiry, refusals; and the
//! consumer-lag route over a streaming pipeline's checkpoint.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use weir_bus::{Bus, Record, local::LocalBus};
use weir_lake::{Lake, LakeConfig, LakeUrl};
use weir_serving::{
    alerts, http, lag,
    realtime::{self, Realtime},
};
use weir_stream::silence::{self, Silences};

/// An alert state change as the speed layer writes it.
fn change(merchant: &str, state: &str) -> Record {
    let labels = json!({"alertname": "FailuresHigh", "pipeline": "pay", "merchant_id": merchant});
    let value = json!({"alert": "FailuresHigh", "state": state, "labels": labels, "annotations": {},
        "value": 0.5, "evaluated_at": "2026-11-30T10:00:00Z", "active_at": "2026-11-30T09:59:00Z",
        "fingerprint": format!("fp-{merchant}"), "silenced": false});
    Record::keyed(format!("fp-{merchant}").into_bytes(), serde_json::to_vec(&value).unwrap())
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn silences_reach_every_follower_and_mark_the_alerts_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(dir.path().join("lake")), ..LakeConfig::default() });
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::open(&dir.path().join("bus"), Default::default()).unwrap());
    bus.create_topic("weir.alerts", 1).await.unwrap();
    bus.producer()
        .await
        .unwrap()
        .send("weir.alerts", vec![change("7", "firing"), change("8", "pending")])
        .await
        .unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let views = Arc::new(Realtime::new(Duration::from_secs(86_400)));
    tokio::spawn(realtime::follow(bus.clone(), views.clone(), Duration::from_millis(50), stop.clone()));
    // The API's silences, and a stream process's, each following the topic.
    let (api_silences, stream_silences) = (Arc::new(Silences::default()), Arc::new(Silences::default()));
    tokio::spawn(silence::follow(bus.clone(), api_silences.clone(), stop.clone()));
    tokio::spawn(silence::follow(bus.clone(), stream_silences.clone(), stop.clone()));
    let tracker = Arc::new(lag::LagTracker::new(bus.clone(), lake.clone()));
    let routes = alerts::router(views.clone(), api_silences, Arc::from(bus.producer().await.unwrap()))
        .merge(lag::router(tracker.clone(), views.clone()));
    let app = http::protect(routes, Arc::new(weir_schemas::tokens::Tokens::from_text("secret").unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let req = client.get(format!("{base}{path}")).bearer_auth("secret");
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let post = |body: Value| {
        let req = client.post(format!("{base}/api/v1/silences")).bearer_auth("secret").json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    let alerts = eventually("both alerts listed", async || {
        let (_, v) = get("/api/v1/alerts").await;
        (v["alerts"].as_array()?.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(alerts["alerts"][0]["silenced_by"], json!([]));
    let (_, firing) = get("/api/v1/alerts?state=firing").await;
    assert_eq!(firing["alerts"].as_array().unwrap().len(), 1, "{firing}");

    // A silence of merchant 7: the API answers with its id; both followers hold it.
    let (status, made) = post(json!({
        "matchers": [{"name": "alertname", "value": "FailuresHigh"}, {"name": "merchant_id", "value": "7"}],
        "endsAt": "2099-01-01T00:00:00Z", "createdBy": "oncall", "comment": "migrating merchant 7"
    }))
    .await;
    assert_eq!(status, 200, "{made}");
    let id = made["silenceID"].as_str().unwrap().to_string();
    let labels = |m: &str| {
        [("alertname", "FailuresHigh"), ("merchant_id", m)].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
    };
    eventually("the stream process holds the silence", async || stream_silences.silenced(&labels("7")).then_some(()))
        .await;
    assert!(!stream_silences.silenced(&labels("8")));
    let (_, alerts) = get("/api/v1/alerts").await;
    let by: Vec<&Value> = alerts["alerts"].as_array().unwrap().iter().map(|a| &a["silenced_by"]).collect();
    assert_eq!(by, vec![&json!([id]), &json!([])], "{alerts}");
    let (_, listed) = get("/api/v1/silences").await;
    assert_eq!(listed[0]["status"]["state"], "active");
    assert_eq!(listed[0]["comment"], "migrating merchant 7");

    // Refusals name the problem.
    for (body, why) in [
        (json!({"matchers": [], "endsAt": "2099-01-01T00:00:00Z"}), "at least one matcher"),
        (
            json!({"matchers": [{"name": "a", "value": "x", "isRegex": true}], "endsAt": "2099-01-01T00:00:00Z"}),
            "regex",
        ),
        (json!({"matchers": [{"name": "a", "value": "x"}], "endsAt": "2000-01-01T00:00:00Z"}), "endsAt"),
        (json!({"matchers": [{"name": "a", "value": "x"}]}), "endsAt"),
        (
            json!({"id": "nope", "matchers": [{"name": "a", "value": "x"}], "endsAt": "2099-01-01T00:00:00Z"}),
            "no silence",
        ),
    ] {
        let (status, v) = post(body.clone()).await;
        assert!(status == 400 || status == 404, "{body} → {status} {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body} → {v}");
    }

    // Expiring it lifts it everywhere.
    let r = client.delete(format!("{base}/api/v1/silence/{id}")).bearer_auth("secret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    eventually("the stream process sees the expiry", async || (!stream_silences.silenced(&labels("7"))).then_some(()))
        .await;
    let (_, listed) = get("/api/v1/silences").await;
    assert_eq!(listed[0]["status"]["state"], "expired");
    let r = client.delete(format!("{base}/api/v1/silence/unknown")).bearer_auth("secret").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let anonymous = client.get(format!("{base}/api/v1/silences")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Lag: a pipeline whose checkpoint holds partition 0 at offset 2 and partition 1 at 3, of a
    // topic with 5 and 3 records.
    let (status, _) = get("/api/v1/lag").await;
    assert_eq!(status, 503, "not measured yet");
    tracker.measure().await.unwrap();
    let (status, lagging) = get("/api/v1/lag").await;
    assert_eq!((status, &lagging["consumers"]), (200, &json!([])), "no lake table, no checkpoint");
    bus.create_topic("shop.payments", 2).await.unwrap();
    let producer = bus.producer().await.unwrap();
    for (p, n) in [(0, 5), (1, 3)] {
        let records = (0..n).map(|i| Record { partition: Some(p), ..Record::keyed(vec![i], vec![i]) }).collect();
        producer.send("shop.payments", records).await.unwrap();
    }
    let checkpoint = json!({"pipeline": "pay", "topic": "shop.payments", "taken_at_ms": 0,
        "partitions": {"0": {"next": 2, "max_time": null}, "1": {"next": 3, "max_time": null}}});
    lake.put_object("checkpoints/stream/pay.json", serde_json::to_vec(&checkpoint).unwrap()).await.unwrap();
    tracker.measure().await.unwrap();
    let (_, lagging) = get("/api/v1/lag").await;
    let c = &lagging["consumers"][0];
    assert_eq!(
        (&c["consumer"], &c["target"], &c["topic"], &c["lag"]),
        (&json!("stream"), &json!("pay"), &json!("shop.payments"), &json!(3)),
        "{lagging}"
    );
    let partitions: Vec<(i64, i64, i64)> = c["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["position"].as_i64().unwrap(), p["end"].as_i64().unwrap(), p["lag"].as_i64().unwrap()))
        .collect();
    assert_eq!(partitions, vec![(2, 5, 3), (3, 3, 0)]);
    let (_, status) = get("/api/v1/pipelines").await;
    let p = &status["pipelines"][0];
    assert_eq!(
        (&p["pipeline"], &p["topic"], &p["lag"], &p["watermark"]),
        (&json!("pay"), &json!("shop.payments"), &json!(3), &Value::Null),
        "{status}"
    );
    assert!(p["checkpoint_age_s"].as_f64().unwrap() > 1e6, "a checkpoint taken at the epoch: {status}");
}
