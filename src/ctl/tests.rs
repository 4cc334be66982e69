use super::*;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("ambit ctl").chain(args.iter().copied())).unwrap()
}

#[test]
fn filters_and_format_are_global() {
    let c = cli(&[
        "explain",
        "client",
        "web:80",
        "-o",
        "json",
        "--admin",
        "127.0.0.1:1",
    ]);
    assert_eq!(c.output, Format::Json);
    assert_eq!(c.admin, "127.0.0.1:1".parse().unwrap());
    let c = cli(&["connections", "--watch", "--namespace", "default"]);
    assert!(matches!(c.command, CtlCommand::Connections { watch: Some(w) } if w == 2.0));
    assert_eq!(c.filter.namespace.as_deref(), Some("default"));
    assert!(Cli::try_parse_from(["ambit ctl", "workloads", "--admin", "nowhere"]).is_err());
}

#[tokio::test]
async fn an_unreachable_admin_address_is_one_line_and_exit_3() {
    // A port nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = cli(&["workloads", "--admin", &addr.to_string()]);
    let err = run(&c).await.unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach the admin API at {addr}: ")),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn tables_align_columns_and_filters_apply() {
    let dump = serde_json::json!({
        "workloads": [
            {"name": "client", "namespace": "default", "node": "node-1", "workloadIps": ["10.0.0.1"],
             "protocol": "HBONE", "trustDomain": "cluster.local", "serviceAccount": "client", "status": "Healthy"},
            {"name": "web", "namespace": "other", "node": "node-2", "workloadIps": ["10.0.0.2"],
             "protocol": "TCP", "trustDomain": "cluster.local", "serviceAccount": "web", "status": "Healthy"}
        ]
    });
    let f = Filter {
        node: Some("node-1".into()),
        ..Filter::default()
    };
    let (t, v) = render::workloads(&dump, &f).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(
        t.to_string(),
        "NAMESPACE  NAME    ADDRESS   NODE    PROTOCOL  WAYPOINT  IDENTITY                                     STATUS\n\
         default    client  10.0.0.1  node-1  HBONE               spiffe://cluster.local/ns/default/sa/client  Healthy\n"
    );
    let f = Filter {
        workload: Some("nope".into()),
        ..Filter::default()
    };
    let err = render::policies(&dump, &f).unwrap_err();
    assert_eq!(err.to_string(), "unknown workload \"nope\"");
}

#[test]
fn query_values_are_percent_encoded() {
    assert_eq!(http::encode("default/web:80"), "default%2Fweb%3A80");
    assert_eq!(http::encode("a=b,c"), "a%3Db%2Cc");
}
