//! AWS EC2's Query protocol: `POST /` with a form (`Action=ExportImage&...`), signed with
//! SigV4 for service `ec2`, answered in XML (`xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"`,
//! lowerCamel element names, lists of `<item>`).

use std::collections::BTreeMap;

use imgconv_export::api::Api;
use serde_json::{json, Value};

use crate::auth::{verify_sigv4, AuthError};
use crate::wire::{error, esc, Incoming, Wire};
use crate::{Caller, Provider, Service};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Form fields, at most this many (EC2's own requests have a few dozen).
const MAX_FIELDS: usize = 1000;

fn err(req: &Incoming<'_>, status: u16, code: &str, message: &str) -> Wire {
    error(Provider::Aws, req.request_id, status, code, message)
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    let live = svc.live();
    let signed = verify_sigv4(&req.signed(), "ec2", |k| {
        crate::secret(
            &live.config,
            |c| match c {
                Caller::Aws {
                    access_key_id,
                    secret_access_key,
                    ..
                } => Some((access_key_id.as_str(), secret_access_key.as_str())),
                _ => None,
            },
            k,
        )
    });
    let key = match signed {
        Ok(key) => key,
        Err(e) => {
            let (status, code) = match &e {
                AuthError::Missing(_) => (401, "AuthFailure"),
                AuthError::UnknownKey(_) => (401, "AuthFailure"),
                AuthError::BadSignature(_) => (403, "SignatureDoesNotMatch"),
                // EC2 answers a stale request with 400.
                AuthError::Expired(_) => (400, "RequestExpired"),
            };
            return err(req, status, code, e.message());
        }
    };
    let who = svc.who(Provider::Aws, &key);
    let caller = Verified {
        svc,
        req,
        account: who.account.clone(),
        who,
    };
    let text = if req.method == axum::http::Method::POST {
        req.body
    } else {
        req.query.as_bytes()
    };
    if std::str::from_utf8(text).is_err() {
        return err(
            req,
            400,
            "MalformedQueryString",
            "the request's form is not UTF-8",
        );
    }
    let form = form(text);
    if form.len() > MAX_FIELDS {
        return err(
            req,
            400,
            "InvalidParameterCombination",
            "too many parameters",
        );
    }
    match form.get("Action").map(String::as_str) {
        Some("ExportImage") => export_image(&caller, &form),
        Some("DescribeExportImageTasks") => describe(&caller, &form),
        Some("CreateInstanceExportTask") => export_instance(&caller, &form),
        Some("DescribeExportTasks") => describe_instance_tasks(&caller, &form),
        Some("CancelExportTask") => cancel(&caller, &form),
        Some(other) => err(
            req,
            400,
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
        None => err(
            req,
            400,
            "MissingAction",
            "The request must contain the parameter Action",
        ),
    }
}

/// A verified request: the service, the request, and the account its key acts for.
struct Verified<'a> {
    svc: &'a Service,
    req: &'a Incoming<'a>,
    account: String,
    who: crate::Who,
}

/// A form's fields (one more than [`MAX_FIELDS`] at most, so that too many can be told).
pub(crate) fn form(text: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(text)
        .take(MAX_FIELDS + 1)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `Prefix.N.rest` values, by N in order.
fn indexed<'a>(
    form: &'a BTreeMap<String, String>,
    prefix: &str,
) -> BTreeMap<u32, Vec<(&'a str, &'a str)>> {
    let mut out: BTreeMap<u32, Vec<(&str, &str)>> = BTreeMap::new();
    for (k, v) in form {
        let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(n) = n.parse::<u32>() {
            out.entry(n).or_default().push((tail, v));
        }
    }
    out
}

/// The form as the JSON request the export module takes.
pub(crate) fn request_of(form: &BTreeMap<String, String>) -> Value {
    let mut r = serde_json::Map::new();
    for name in [
        "DiskImageFormat",
        "ImageId",
        "Description",
        "ClientToken",
        "RoleName",
        "InstanceId",
        "TargetEnvironment",
    ] {
        if let Some(v) = form.get(name) {
            r.insert(name.into(), json!(v));
        }
    }
    if form.get("DryRun").map(String::as_str) == Some("true") {
        r.insert("DryRun".into(), json!(true));
    }
    let mut loc = serde_json::Map::new();
    for (f, name) in [
        ("S3ExportLocation.S3Bucket", "S3Bucket"),
        ("S3ExportLocation.S3Prefix", "S3Prefix"),
    ] {
        if let Some(v) = form.get(f) {
            loc.insert(name.into(), json!(v));
        }
    }
    if !loc.is_empty() {
        r.insert("S3ExportLocation".into(), Value::Object(loc));
    }
    let mut to_s3 = serde_json::Map::new();
    for name in ["ContainerFormat", "DiskImageFormat", "S3Bucket", "S3Prefix"] {
        if let Some(v) = form.get(&format!("ExportToS3.{name}")) {
            to_s3.insert(name.into(), json!(v));
        }
    }
    if !to_s3.is_empty() {
        r.insert("ExportToS3".into(), Value::Object(to_s3));
    }
    let specs: Vec<Value> = indexed(form, "TagSpecification")
        .into_values()
        .map(|fields| {
            let sub: BTreeMap<String, String> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
            let tags: Vec<Value> = indexed(&sub, "Tag")
                .into_values()
                .map(|t| {
                    let get = |n: &str| {
                        t.iter()
                            .find(|(k, _)| *k == n)
                            .map(|(_, v)| *v)
                            .unwrap_or("")
                    };
                    json!({ "Key": get("Key"), "Value": get("Value") })
                })
                .collect();
            json!({ "ResourceType": sub.get("ResourceType"), "Tags": tags })
        })
        .collect();
    if !specs.is_empty() {
        r.insert("TagSpecifications".into(), Value::Array(specs));
    }
    Value::Object(r)
}

fn export_image(c: &Verified<'_>, form: &BTreeMap<String, String>) -> Wire {
    let (svc, req) = (c.svc, c.req);
    let request = request_of(form);
    let Some(image) = form.get("ImageId") else {
        return err(
            req,
            400,
            "MissingParameter",
            "The request must contain the parameter ImageId",
        );
    };
    let Some(source) = svc.image(image, &c.account) else {
        return err(
            req,
            400,
            "InvalidAMIID.NotFound",
            &format!("The image id '[{image}]' does not exist"),
        );
    };
    let reply = match submit(c, &source, &request) {
        Ok(r) => r,
        Err(w) => return w,
    };
    let mut x = open("ExportImageResponse", req.request_id);
    task_fields(&mut x, &reply.body);
    x.push_str("</ExportImageResponse>");
    Wire::xml(200, x)
}

fn export_instance(c: &Verified<'_>, form: &BTreeMap<String, String>) -> Wire {
    let (svc, req) = (c.svc, c.req);
    let request = request_of(form);
    let Some(instance) = form.get("InstanceId") else {
        return err(
            req,
            400,
            "MissingParameter",
            "The request must contain the parameter InstanceId",
        );
    };
    let live = svc.live();
    let Some(source) = Service::visible(&live.config.instances, instance, &c.account) else {
        return err(
            req,
            400,
            "InvalidInstanceID.NotFound",
            &format!("The instance ID '{instance}' does not exist"),
        );
    };
    let reply = match submit(c, source, &request) {
        Ok(r) => r,
        Err(w) => return w,
    };
    let mut x = open("CreateInstanceExportTaskResponse", req.request_id);
    x.push_str("<exportTask>");
    instance_task_fields(&mut x, &reply.body["ExportTask"]);
    x.push_str("</exportTask></CreateInstanceExportTaskResponse>");
    Wire::xml(200, x)
}

/// An instance export task's fields, as EC2 names them.
fn instance_task_fields(x: &mut String, t: &Value) {
    for (json_name, xml_name) in [
        ("ExportTaskId", "exportTaskId"),
        ("Description", "description"),
        ("State", "state"),
        ("StatusMessage", "statusMessage"),
    ] {
        leaf(x, xml_name, &t[json_name]);
    }
    let d = &t["InstanceExportDetails"];
    x.push_str("<instanceExport>");
    leaf(x, "instanceId", &d["InstanceId"]);
    leaf(x, "targetEnvironment", &d["TargetEnvironment"]);
    x.push_str("</instanceExport><exportToS3>");
    let s3 = &t["ExportToS3Task"];
    for (json_name, xml_name) in [
        ("ContainerFormat", "containerFormat"),
        ("DiskImageFormat", "diskImageFormat"),
        ("S3Bucket", "s3Bucket"),
        ("S3Key", "s3Key"),
    ] {
        leaf(x, xml_name, &s3[json_name]);
    }
    x.push_str("</exportToS3>");
    if let Some(tags) = t.get("Tags").and_then(Value::as_array) {
        x.push_str("<tagSet>");
        for tag in tags {
            x.push_str("<item>");
            leaf(x, "key", &tag["Key"]);
            leaf(x, "value", &tag["Value"]);
            x.push_str("</item>");
        }
        x.push_str("</tagSet>");
    }
}

fn describe_instance_tasks(c: &Verified<'_>, form: &BTreeMap<String, String>) -> Wire {
    let (svc, req, account) = (c.svc, c.req, c.account.as_str());
    let ids: Vec<&str> = indexed(form, "ExportTaskId")
        .into_values()
        .flat_map(|v| v.into_iter().map(|(_, id)| id))
        .collect();
    let tasks: Vec<Value> = if ids.is_empty() {
        let reply = svc.with_store(|s| Api::Aws.list(s, account));
        if reply.status != 200 {
            return api_error(req, &reply.status, &reply.body);
        }
        reply.body["ExportTasks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        let mut out = Vec::new();
        for id in ids {
            let reply = svc.with_store(|s| Api::Aws.describe(s, account, id));
            match reply.body.get("ExportTasks") {
                Some(t) if reply.status == 200 => out.push(t[0].clone()),
                _ if reply.status >= 500 => {
                    return api_error(req, &reply.status, &reply.body);
                }
                _ => {
                    return err(
                        req,
                        400,
                        "InvalidExportTaskID.NotFound",
                        &format!("The export task ID '{id}' does not exist"),
                    )
                }
            }
        }
        out
    };
    let mut x = open("DescribeExportTasksResponse", req.request_id);
    x.push_str("<exportTaskSet>");
    for t in &tasks {
        x.push_str("<item>");
        instance_task_fields(&mut x, t);
        x.push_str("</item>");
    }
    x.push_str("</exportTaskSet></DescribeExportTasksResponse>");
    Wire::xml(200, x)
}

/// Submit an export of `source`; the accepted reply, or the error to answer.
fn submit(
    c: &Verified<'_>,
    source: &std::path::Path,
    request: &Value,
) -> Result<imgconv_export::api::Reply, Wire> {
    let (svc, req) = (c.svc, c.req);
    let ctx = svc.context(source, None, req, &c.who);
    let reply = Api::Aws.submit(&svc.store, &ctx, request);
    if reply.run.is_some() {
        svc.notify();
    }
    if reply.status != 200 {
        return Err(api_error(req, &reply.status, &reply.body));
    }
    Ok(reply)
}

fn api_error(req: &Incoming<'_>, status: &u16, body: &Value) -> Wire {
    let e = &body["Errors"][0];
    err(
        req,
        *status,
        e["Code"].as_str().unwrap_or("InternalError"),
        e["Message"].as_str().unwrap_or(""),
    )
}

fn open(name: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{name} xmlns=\"{XMLNS}\"><requestId>{}</requestId>",
        esc(request_id)
    )
}

fn leaf(x: &mut String, name: &str, v: &Value) {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => return,
        other => other.to_string(),
    };
    x.push_str(&format!("<{name}>{}</{name}>", esc(&text)));
}

/// An export image task's fields, as EC2 names them.
fn task_fields(x: &mut String, t: &Value) {
    for (json_name, xml_name) in [
        ("Description", "description"),
        ("DiskImageFormat", "diskImageFormat"),
        ("ExportImageTaskId", "exportImageTaskId"),
        ("ImageId", "imageId"),
        ("RoleName", "roleName"),
        ("Progress", "progress"),
        ("Status", "status"),
        ("StatusMessage", "statusMessage"),
    ] {
        leaf(x, xml_name, &t[json_name]);
    }
    if let Some(loc) = t.get("S3ExportLocation") {
        x.push_str("<s3ExportLocation>");
        leaf(x, "s3Bucket", &loc["S3Bucket"]);
        leaf(x, "s3Prefix", &loc["S3Prefix"]);
        x.push_str("</s3ExportLocation>");
    }
    if let Some(tags) = t.get("Tags").and_then(Value::as_array) {
        x.push_str("<tagSet>");
        for tag in tags {
            x.push_str("<item>");
            leaf(x, "key", &tag["Key"]);
            leaf(x, "value", &tag["Value"]);
            x.push_str("</item>");
        }
        x.push_str("</tagSet>");
    }
}

fn describe(c: &Verified<'_>, form: &BTreeMap<String, String>) -> Wire {
    let (svc, req, account) = (c.svc, c.req, c.account.as_str());
    let ids: Vec<&str> = indexed(form, "ExportImageTaskId")
        .into_values()
        .flat_map(|v| v.into_iter().map(|(_, id)| id))
        .collect();
    let max = match form.get("MaxResults").map(|m| m.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => {
            return err(
                req,
                400,
                "InvalidParameterValue",
                "MaxResults must be from 1 to 500",
            )
        }
    };
    let start = match form.get("NextToken").map(|t| t.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return err(
                req,
                400,
                "InvalidParameterValue",
                "The NextToken is not valid",
            )
        }
    };
    let tasks: Result<Vec<Value>, Wire> = if ids.is_empty() {
        let reply = svc.with_store(|s| Api::Aws.list(s, account));
        if reply.status != 200 {
            return api_error(req, &reply.status, &reply.body);
        }
        Ok(reply.body["ExportImageTasks"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    } else {
        ids.iter()
            .map(|id| {
                let reply = svc.with_store(|s| Api::Aws.describe(s, account, id));
                if reply.status == 200 && reply.body.get("ExportImageTasks").is_some() {
                    Ok(reply.body["ExportImageTasks"][0].clone())
                } else if reply.status >= 500 {
                    // The store failed (busy, unreachable): a server error the SDK retries,
                    // never "no such task".
                    Err(api_error(req, &reply.status, &reply.body))
                } else {
                    Err(err(
                        req,
                        400,
                        "InvalidExportImageTaskId.NotFound",
                        &format!("The export image task ID '{id}' does not exist"),
                    ))
                }
            })
            .collect()
    };
    let tasks = match tasks {
        Ok(t) => t,
        Err(w) => return w,
    };
    let mut x = open("DescribeExportImageTasksResponse", req.request_id);
    x.push_str("<exportImageTaskSet>");
    for t in tasks.iter().skip(start).take(max) {
        x.push_str("<item>");
        task_fields(&mut x, t);
        x.push_str("</item>");
    }
    x.push_str("</exportImageTaskSet>");
    if start + max < tasks.len() {
        leaf(&mut x, "nextToken", &json!((start + max).to_string()));
    }
    x.push_str("</DescribeExportImageTasksResponse>");
    Wire::xml(200, x)
}

fn cancel(c: &Verified<'_>, form: &BTreeMap<String, String>) -> Wire {
    let (svc, req, account) = (c.svc, c.req, c.account.as_str());
    let Some(id) = form.get("ExportTaskId") else {
        return err(
            req,
            400,
            "MissingParameter",
            "The request must contain the parameter ExportTaskId",
        );
    };
    let reply = Api::Aws.cancel(&svc.store, account, id);
    if reply.status != 200 {
        return api_error(req, &reply.status, &reply.body);
    }
    let mut x = open("CancelExportTaskResponse", req.request_id);
    x.push_str("<return>true</return></CancelExportTaskResponse>");
    Wire::xml(200, x)
}
