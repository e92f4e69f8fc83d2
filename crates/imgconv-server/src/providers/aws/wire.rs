//! EC2's Query protocol: `POST /` with a form (`Action=ExportImage&...`), signed with SigV4
//! for service `ec2`, answered in XML (`xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"`,
//! lowerCamel element names, lists of `<item>`), errors as `<Response><Errors>`.

use std::collections::BTreeMap;

use axum::http::Method;

use super::{
    CreateInstanceExportTask, ExportImage, ExportToS3, ImageTask, InstanceTask, Request,
    S3ExportLocation, Tag, TagSpecification, Task,
};
use crate::auth::{verify_sigv4, AuthError};
use crate::providers::{Failure, Provider};
use crate::wire::{esc, Incoming, Wire};
use crate::{Caller, Service, Who};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Form fields, at most this many (EC2's own requests have a few dozen).
const MAX_FIELDS: usize = 1000;

/// Whether a request is EC2's: the Query protocol's `/`.
pub(crate) fn routes(method: &Method, path: &str) -> bool {
    path == "/" && (method == Method::POST || method == Method::GET)
}

/// A request id as EC2 writes them.
pub(crate) fn request_id(_: &axum::http::HeaderMap) -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An EC2 error: `<Response><Errors><Error>` and the request id.
pub(crate) fn error(request_id: &str, f: &Failure) -> Wire {
    Wire::xml(
        f.status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
             <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            esc(&f.code),
            esc(&f.message),
            esc(request_id)
        ),
    )
    .with_header("x-amzn-requestid", request_id)
}

fn err(req: &Incoming<'_>, status: u16, code: &str, message: &str) -> Wire {
    error(req.request_id, &Failure::new(status, code, message))
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
    let text = if req.method == Method::POST {
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
    let outcome = match form.get("Action").map(String::as_str) {
        Some("ExportImage") => export(svc, req, &who, Request::ExportImage(export_image(&form))),
        Some("CreateInstanceExportTask") => export(
            svc,
            req,
            &who,
            Request::ExportInstance(export_instance(&form)),
        ),
        Some("DescribeExportImageTasks") => describe_image_tasks(svc, req, &who, &form),
        Some("DescribeExportTasks") => describe_instance_tasks(svc, req, &who, &form),
        Some("CancelExportTask") => cancel(svc, req, &who, &form),
        Some(other) => Err(Failure::bad(
            "InvalidAction",
            format!("The action {other} is not valid for this web service."),
        )),
        None => Err(Failure::bad(
            "MissingAction",
            "The request must contain the parameter Action",
        )),
    };
    outcome.unwrap_or_else(|f| error(req.request_id, &f))
}

/// A form's fields (one more than [`MAX_FIELDS`] at most, so that too many can be told).
fn form(text: &[u8]) -> BTreeMap<String, String> {
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

/// The values of a list (`Prefix.1`, `Prefix.2`, ...).
fn list<'a>(form: &'a BTreeMap<String, String>, prefix: &str) -> Vec<&'a str> {
    indexed(form, prefix)
        .into_values()
        .flat_map(|v| v.into_iter().map(|(_, id)| id))
        .collect()
}

fn field(form: &BTreeMap<String, String>, name: &str) -> Option<String> {
    form.get(name).cloned()
}

/// `TagSpecification.N.ResourceType` and `TagSpecification.N.Tag.M.Key/Value`.
fn tag_specifications(form: &BTreeMap<String, String>) -> Vec<TagSpecification> {
    indexed(form, "TagSpecification")
        .into_values()
        .map(|fields| {
            let sub: BTreeMap<String, String> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
            let tags = indexed(&sub, "Tag")
                .into_values()
                .map(|t| {
                    let get = |n: &str| {
                        t.iter()
                            .find(|(k, _)| *k == n)
                            .map(|(_, v)| (*v).to_string())
                            .unwrap_or_default()
                    };
                    Tag {
                        key: get("Key"),
                        value: get("Value"),
                    }
                })
                .collect();
            TagSpecification {
                resource_type: sub.get("ResourceType").cloned(),
                tags,
            }
        })
        .collect()
}

/// The form of `ExportImage` as its typed request.
fn export_image(form: &BTreeMap<String, String>) -> ExportImage {
    let location = S3ExportLocation {
        s3_bucket: field(form, "S3ExportLocation.S3Bucket"),
        s3_prefix: field(form, "S3ExportLocation.S3Prefix"),
    };
    ExportImage {
        client_token: field(form, "ClientToken"),
        description: field(form, "Description"),
        disk_image_format: field(form, "DiskImageFormat"),
        dry_run: form.get("DryRun").map(String::as_str) == Some("true"),
        image_id: field(form, "ImageId"),
        s3_export_location: (location != S3ExportLocation::default()).then_some(location),
        role_name: field(form, "RoleName"),
        tag_specifications: tag_specifications(form),
    }
}

/// The form of `CreateInstanceExportTask` as its typed request.
fn export_instance(form: &BTreeMap<String, String>) -> CreateInstanceExportTask {
    let to_s3 = ExportToS3 {
        container_format: field(form, "ExportToS3.ContainerFormat"),
        disk_image_format: field(form, "ExportToS3.DiskImageFormat"),
        s3_bucket: field(form, "ExportToS3.S3Bucket"),
        s3_prefix: field(form, "ExportToS3.S3Prefix"),
    };
    CreateInstanceExportTask {
        instance_id: field(form, "InstanceId"),
        target_environment: field(form, "TargetEnvironment"),
        description: field(form, "Description"),
        export_to_s3: (to_s3 != ExportToS3::default()).then_some(to_s3),
        tag_specifications: tag_specifications(form),
    }
}

/// Any form, behind a good signature, through the parsing and validation of `ExportImage`
/// (the fuzz target's body).
#[doc(hidden)]
pub fn fuzz_form(
    stores: &impl imgconv_export::jobs::Stores,
    ctx: &crate::providers::Context,
    body: &[u8],
) {
    let form = form(body);
    let _ = match form.get("InstanceId") {
        Some(_) => super::export_instance(stores, ctx, &export_instance(&form)).map(|_| ()),
        None => super::export_image(stores, ctx, &export_image(&form)).map(|_| ()),
    };
}

/// An export of an image or an instance: the disk its id stands for, if the account may see
/// it, queued.
fn export(svc: &Service, req: &Incoming<'_>, who: &Who, request: Request) -> Result<Wire, Failure> {
    let source = match &request {
        Request::ExportImage(r) => {
            let image = r.image_id.as_deref().ok_or_else(|| {
                Failure::bad(
                    "MissingParameter",
                    "The request must contain the parameter ImageId",
                )
            })?;
            svc.image(image, &who.account)
                .map_err(|e| super::store_failure(&e))?
                .ok_or_else(|| {
                    Failure::bad(
                        "InvalidAMIID.NotFound",
                        format!("The image id '[{image}]' does not exist"),
                    )
                })?
        }
        Request::ExportInstance(r) => {
            let instance = r.instance_id.as_deref().ok_or_else(|| {
                Failure::bad(
                    "MissingParameter",
                    "The request must contain the parameter InstanceId",
                )
            })?;
            let live = svc.live();
            Service::visible(&live.config.instances, instance, &who.account)
                .map(std::path::Path::to_path_buf)
                .ok_or_else(|| {
                    Failure::bad(
                        "InvalidInstanceID.NotFound",
                        format!("The instance ID '{instance}' does not exist"),
                    )
                })?
        }
    };
    let ctx = svc.context(&source, req, who);
    let mut x;
    let run = match request {
        Request::ExportImage(r) => {
            let (task, run) = super::export_image(&svc.store, &ctx, &r)?;
            x = open("ExportImageResponse", req.request_id);
            image_task(&mut x, &task);
            x.push_str("</ExportImageResponse>");
            run
        }
        Request::ExportInstance(r) => {
            let (task, run) = super::export_instance(&svc.store, &ctx, &r)?;
            x = open("CreateInstanceExportTaskResponse", req.request_id);
            x.push_str("<exportTask>");
            instance_task(&mut x, &task);
            x.push_str("</exportTask></CreateInstanceExportTaskResponse>");
            run
        }
    };
    if run.is_some() {
        svc.notify();
    }
    Ok(Wire::xml(200, x))
}

fn describe_instance_tasks(
    svc: &Service,
    req: &Incoming<'_>,
    who: &Who,
    form: &BTreeMap<String, String>,
) -> Result<Wire, Failure> {
    let ids = list(form, "ExportTaskId");
    let tasks = svc
        .with_store(|s| super::tasks(s, &who.account, &ids))?
        .map_err(|id| {
            Failure::bad(
                "InvalidExportTaskID.NotFound",
                format!("The export task ID '{id}' does not exist"),
            )
        })?;
    let mut x = open("DescribeExportTasksResponse", req.request_id);
    x.push_str("<exportTaskSet>");
    for t in &tasks {
        if let Task::Instance(t) = t {
            x.push_str("<item>");
            instance_task(&mut x, t);
            x.push_str("</item>");
        } else if !ids.is_empty() {
            // An image task's id is not an instance task's.
            return Err(Failure::bad(
                "InvalidExportTaskID.NotFound",
                "The export task ID does not exist",
            ));
        }
    }
    x.push_str("</exportTaskSet></DescribeExportTasksResponse>");
    Ok(Wire::xml(200, x))
}

fn describe_image_tasks(
    svc: &Service,
    req: &Incoming<'_>,
    who: &Who,
    form: &BTreeMap<String, String>,
) -> Result<Wire, Failure> {
    let ids = list(form, "ExportImageTaskId");
    let max = match form.get("MaxResults").map(|m| m.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => {
            return Err(Failure::bad(
                "InvalidParameterValue",
                "MaxResults must be from 1 to 500",
            ))
        }
    };
    let start = match form.get("NextToken").map(|t| t.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err(Failure::bad(
                "InvalidParameterValue",
                "The NextToken is not valid",
            ))
        }
    };
    let not_found = |id: &str| {
        Failure::bad(
            "InvalidExportImageTaskId.NotFound",
            format!("The export image task ID '{id}' does not exist"),
        )
    };
    // A store that fails (busy, unreachable) is a server error the SDK retries, never "no
    // such task".
    let tasks = svc
        .with_store(|s| super::tasks(s, &who.account, &ids))?
        .map_err(|id| not_found(&id))?;
    let mut images = Vec::new();
    for (t, id) in tasks
        .iter()
        .zip(ids.iter().map(Some).chain(std::iter::repeat(None)))
    {
        match (t, id) {
            (Task::Image(t), _) => images.push(t),
            (Task::Instance(_), Some(id)) => return Err(not_found(id)),
            (Task::Instance(_), None) => {}
        }
    }
    let mut x = open("DescribeExportImageTasksResponse", req.request_id);
    x.push_str("<exportImageTaskSet>");
    for t in images.iter().skip(start).take(max) {
        x.push_str("<item>");
        image_task(&mut x, t);
        x.push_str("</item>");
    }
    x.push_str("</exportImageTaskSet>");
    if start + max < images.len() {
        leaf(&mut x, "nextToken", &(start + max).to_string());
    }
    x.push_str("</DescribeExportImageTasksResponse>");
    Ok(Wire::xml(200, x))
}

fn cancel(
    svc: &Service,
    req: &Incoming<'_>,
    who: &Who,
    form: &BTreeMap<String, String>,
) -> Result<Wire, Failure> {
    let id = form.get("ExportTaskId").ok_or_else(|| {
        Failure::bad(
            "MissingParameter",
            "The request must contain the parameter ExportTaskId",
        )
    })?;
    super::cancel(&svc.store, &who.account, id)?;
    let mut x = open("CancelExportTaskResponse", req.request_id);
    x.push_str("<return>true</return></CancelExportTaskResponse>");
    Ok(Wire::xml(200, x))
}

fn open(name: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{name} xmlns=\"{XMLNS}\"><requestId>{}</requestId>",
        esc(request_id)
    )
}

fn leaf(x: &mut String, name: &str, text: &str) {
    x.push_str(&format!("<{name}>{}</{name}>", esc(text)));
}

fn leaf_opt(x: &mut String, name: &str, text: Option<&str>) {
    if let Some(t) = text {
        leaf(x, name, t);
    }
}

fn tag_set(x: &mut String, tags: &[Tag]) {
    x.push_str("<tagSet>");
    for tag in tags {
        x.push_str("<item>");
        leaf(x, "key", &tag.key);
        leaf(x, "value", &tag.value);
        x.push_str("</item>");
    }
    x.push_str("</tagSet>");
}

/// An image export task's fields, as EC2 names them.
fn image_task(x: &mut String, t: &ImageTask) {
    leaf(x, "description", &t.description);
    leaf(x, "diskImageFormat", &t.disk_image_format);
    leaf(x, "exportImageTaskId", &t.export_image_task_id);
    leaf(x, "imageId", &t.image_id);
    leaf_opt(x, "roleName", t.role_name.as_deref());
    leaf_opt(x, "progress", t.progress.as_deref());
    leaf(x, "status", &t.status);
    leaf_opt(x, "statusMessage", t.status_message.as_deref());
    let loc = &t.s3_export_location;
    x.push_str("<s3ExportLocation>");
    leaf_opt(x, "s3Bucket", loc.s3_bucket.as_deref());
    leaf_opt(x, "s3Prefix", loc.s3_prefix.as_deref());
    x.push_str("</s3ExportLocation>");
    tag_set(x, &t.tags);
}

/// An instance export task's fields, as EC2 names them.
fn instance_task(x: &mut String, t: &InstanceTask) {
    leaf(x, "exportTaskId", &t.export_task_id);
    leaf(x, "description", &t.description);
    leaf(x, "state", &t.state);
    leaf_opt(x, "statusMessage", t.status_message.as_deref());
    let d = &t.instance_export_details;
    x.push_str("<instanceExport>");
    leaf(x, "instanceId", &d.instance_id);
    leaf(x, "targetEnvironment", &d.target_environment);
    x.push_str("</instanceExport><exportToS3>");
    let s3 = &t.export_to_s3_task;
    leaf_opt(x, "containerFormat", s3.container_format.as_deref());
    leaf(x, "diskImageFormat", &s3.disk_image_format);
    leaf(x, "s3Bucket", &s3.s3_bucket);
    leaf(x, "s3Key", &s3.s3_key);
    x.push_str("</exportToS3>");
    tag_set(x, &t.tags);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The form's fields land in the typed request as the SDK's JSON names them.
    #[test]
    fn a_form_parses_into_the_typed_request() {
        let f = form(
            b"Action=ExportImage&ImageId=ami-1&DiskImageFormat=VMDK&S3ExportLocation.S3Bucket=b\
              &S3ExportLocation.S3Prefix=p%2F&DryRun=true&ClientToken=t&Description=d\
              &TagSpecification.1.ResourceType=export-image-task&TagSpecification.1.Tag.1.Key=k\
              &TagSpecification.1.Tag.1.Value=v&TagSpecification.1.Tag.2.Key=k2",
        );
        let r = export_image(&f);
        let json: ExportImage = serde_json::from_value(serde_json::json!({
            "ImageId": "ami-1", "DiskImageFormat": "VMDK", "DryRun": true, "ClientToken": "t",
            "Description": "d",
            "S3ExportLocation": { "S3Bucket": "b", "S3Prefix": "p/" },
            "TagSpecifications": [{ "ResourceType": "export-image-task",
                "Tags": [{ "Key": "k", "Value": "v" }, { "Key": "k2", "Value": "" }] }],
        }))
        .unwrap_or_default();
        assert_eq!(r, json);
        let f = form(
            b"Action=CreateInstanceExportTask&InstanceId=i-1&TargetEnvironment=vmware\
              &ExportToS3.ContainerFormat=ova&ExportToS3.S3Bucket=b",
        );
        let r = export_instance(&f);
        let json: CreateInstanceExportTask = serde_json::from_value(serde_json::json!({
            "InstanceId": "i-1", "TargetEnvironment": "vmware",
            "ExportToS3Task": { "ContainerFormat": "ova", "S3Bucket": "b" },
        }))
        .unwrap_or_default();
        assert_eq!(r, json);
        assert!(export_image(&form(b"Action=ExportImage"))
            .s3_export_location
            .is_none());
    }
}
