"""The providers' own SDKs (boto3, oci, huaweicloudsdkims, huaweicloudsdkevs) and ZStack's
raw HTTP, pointed at `imgconv serve`. Called by the Rust tests as

    python clients.py SCENARIO '{json arguments}'

Each scenario prints one JSON object on stdout: what it saw. It raises (exit 1) when the
service answers otherwise than the scenario requires.
"""

import base64
import datetime
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request

WAIT = 180  # seconds any export may take in the tests


def s3_client(a):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=a["s3"],
        region_name="us-east-1",
        aws_access_key_id=a["s3_key"],
        aws_secret_access_key=a["s3_secret"],
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def download(a, bucket, key, out):
    s3_client(a).download_file(bucket, key, out)
    return out


def ec2_client(a, secret=None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ec2",
        endpoint_url=a["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=a["key"],
        aws_secret_access_key=secret or a["secret"],
        config=Config(retries={"max_attempts": 1}),
    )


def aws_wait(ec2, task_id, states):
    deadline = time.time() + WAIT
    while time.time() < deadline:
        t = ec2.describe_export_image_tasks(ExportImageTaskIds=[task_id])["ExportImageTasks"][0]
        if t["Status"] in states:
            return t
        time.sleep(0.2)
    raise SystemExit(f"task {task_id} did not reach {states}")


def aws_export(a):
    """export_image, describe until completed, download the object with boto3's S3 client."""
    ec2 = ec2_client(a)
    r = ec2.export_image(
        DiskImageFormat=a["format"],
        ImageId=a["image"],
        S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "exports/"},
        Description="imgconv serve test",
        TagSpecifications=[
            {"ResourceType": "export-image-task", "Tags": [{"Key": "team", "Value": "images"}]}
        ],
    )
    tid = r["ExportImageTaskId"]
    assert tid.startswith("export-ami-") and len(tid) == len("export-ami-") + 17, tid
    assert r["Status"] == "active", r
    assert r["S3ExportLocation"]["S3Bucket"] == a["bucket"], r
    assert r["Tags"] == [{"Key": "team", "Value": "images"}], r
    t = aws_wait(ec2, tid, ["completed", "deleted"])
    assert t["Status"] == "completed", t
    key = f"exports/{tid}.{a['format'].lower()}"
    download(a, a["bucket"], key, a["out"])
    # Listing pages with MaxResults and NextToken.
    page = ec2.describe_export_image_tasks(MaxResults=1)
    assert len(page["ExportImageTasks"]) == 1, page
    return {"task": tid, "key": key, "status": t["Status"], "next": page.get("NextToken")}


def aws_instance_export(a):
    """create_instance_export_task into an OVA; describe_export_tasks until completed; the
    object downloaded. An ova container of RAW disks is refused with EC2's error."""
    from botocore.exceptions import ClientError

    ec2 = ec2_client(a)
    r = ec2.create_instance_export_task(
        InstanceId=a["instance"],
        TargetEnvironment="vmware",
        Description="instance export",
        ExportToS3Task={
            "ContainerFormat": "ova",
            "DiskImageFormat": "VMDK",
            "S3Bucket": a["bucket"],
            "S3Prefix": "instances/",
        },
        TagSpecifications=[
            {"ResourceType": "export-instance-task", "Tags": [{"Key": "team", "Value": "vm"}]}
        ],
    )["ExportTask"]
    tid = r["ExportTaskId"]
    assert tid.startswith("export-i-"), r
    assert r["State"] == "active", r
    assert r["InstanceExportDetails"] == {"InstanceId": a["instance"], "TargetEnvironment": "vmware"}, r
    key = r["ExportToS3Task"]["S3Key"]
    assert key == f"instances/{tid}.ova", r
    assert r["ExportToS3Task"]["ContainerFormat"] == "ova", r
    assert r["Tags"] == [{"Key": "team", "Value": "vm"}], r
    deadline = time.time() + WAIT
    while time.time() < deadline:
        t = ec2.describe_export_tasks(ExportTaskIds=[tid])["ExportTasks"][0]
        if t["State"] in ["completed", "cancelled"]:
            break
        time.sleep(0.2)
    assert t["State"] == "completed", t
    listed = [x["ExportTaskId"] for x in ec2.describe_export_tasks()["ExportTasks"]]
    assert listed == [tid], listed
    # Not an image export task.
    images = [x["ExportImageTaskId"] for x in ec2.describe_export_image_tasks()["ExportImageTasks"]]
    assert tid not in images, images
    download(a, a["bucket"], key, a["out"])
    try:
        ec2.create_instance_export_task(
            InstanceId=a["instance"],
            TargetEnvironment="vmware",
            ExportToS3Task={"ContainerFormat": "ova", "DiskImageFormat": "RAW", "S3Bucket": a["bucket"]},
        )
        refused = None
    except ClientError as e:
        refused = e.response["Error"]["Code"]
    try:
        ec2.create_instance_export_task(
            InstanceId="i-0000000000000000f",
            TargetEnvironment="vmware",
            ExportToS3Task={"ContainerFormat": "ova", "S3Bucket": a["bucket"]},
        )
        unknown = None
    except ClientError as e:
        unknown = e.response["Error"]["Code"]
    return {"task": tid, "key": key, "refused": refused, "unknown": unknown}


def aws_wait_completed(a):
    t = aws_wait(ec2_client(a), a["task"], ["completed", "deleted"])
    return {"status": t["Status"], "message": t.get("StatusMessage")}


def aws_idempotent(a):
    """The same ClientToken twice: one task. A dry run: DryRunOperation."""
    from botocore.exceptions import ClientError

    ec2 = ec2_client(a)
    args = dict(
        DiskImageFormat="RAW",
        ImageId=a["image"],
        S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "idem/"},
        ClientToken="token-1234",
    )
    first = ec2.export_image(**args)["ExportImageTaskId"]
    second = ec2.export_image(**args)["ExportImageTaskId"]
    assert first == second, (first, second)
    try:
        ec2.export_image(DryRun=True, **{k: v for k, v in args.items() if k != "ClientToken"})
        raise SystemExit("a dry run answered success")
    except ClientError as e:
        dry = e.response["Error"]["Code"]
    aws_wait(ec2, first, ["completed"])
    return {"first": first, "second": second, "dry_run": dry}


def aws_cancel(a):
    """cancel_export_task on an active task: it ends deleted."""
    ec2 = ec2_client(a)
    before = ec2.describe_export_image_tasks(ExportImageTaskIds=[a["task"]])["ExportImageTasks"][0]
    ec2.cancel_export_task(ExportTaskId=a["task"])
    t = aws_wait(ec2, a["task"], ["deleted", "completed"])
    return {"before": before["Status"], "status": t["Status"]}


def aws_same_token_concurrently(a):
    """The same ClientToken sent at once to each of `endpoints`: the task ids."""
    import threading

    ids = [None] * len(a["endpoints"])
    clients_ = [ec2_client({**a, "endpoint": e}) for e in a["endpoints"]]
    go = threading.Barrier(len(clients_))

    def send(i):
        go.wait()
        ids[i] = clients_[i].export_image(
            DiskImageFormat="RAW", ImageId=a["image"], ClientToken="same-token-everywhere",
            S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "token/"})["ExportImageTaskId"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients_))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return {"ids": ids}


def aws_auth(a):
    """Wrong secret, tampered body, stale clock: each raises the SDK's ClientError."""
    import botocore.auth
    from botocore.exceptions import ClientError

    args = dict(
        DiskImageFormat="RAW",
        ImageId=a["image"],
        S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "auth/"},
    )
    codes = {}
    try:
        ec2_client(a, secret="not-the-secret").export_image(**args)
    except ClientError as e:
        codes["wrong_secret"] = (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
    tampered = ec2_client(a)

    def tamper(request, **_):
        body = request.body
        if isinstance(body, str):
            body = body.encode()
        request.body = body.replace(b"auth%2F", b"evil%2F")

    tampered.meta.events.register("before-send.ec2.ExportImage", tamper)
    try:
        tampered.export_image(**args)
    except ClientError as e:
        codes["tampered"] = (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *x, **k: real(*x, **k) - datetime.timedelta(minutes=20)
    try:
        ec2_client(a).export_image(**args)
    except ClientError as e:
        codes["stale"] = (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
    finally:
        botocore.auth.get_current_datetime = real
    return codes


def oci_keys(a):
    """An API signing key pair: the private key's file, the public key's, and the key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(a["private"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    pub = key.public_key()
    with open(a["public"], "wb") as f:
        f.write(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fp = ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    return {"fingerprint": fp}


def oci_config(a):
    return {
        "user": a["user"],
        "tenancy": a["tenancy"],
        "fingerprint": a["fingerprint"],
        "key_file": a["key_file"],
        "region": "us-ashburn-1",
    }


def oci_compute(a, signer=None):
    import oci

    kwargs = {"service_endpoint": a["endpoint"], "retry_strategy": oci.retry.NoneRetryStrategy()}
    if signer is not None:
        kwargs["signer"] = signer
    return oci.core.ComputeClient(oci_config(a), **kwargs)


def oci_export(a):
    """export_image by tuple and by URI, each waited for with the composite operation."""
    import oci

    compute = oci_compute(a)
    wr = oci.work_requests.WorkRequestClient(oci_config(a), service_endpoint=a["endpoint"])
    composite = oci.core.ComputeClientCompositeOperations(compute, work_request_client=wr)
    out = {}
    tuple_details = oci.core.models.ExportImageViaObjectStorageTupleDetails(
        bucket_name=a["bucket"], namespace_name=a["namespace"], object_name="oci/by-tuple.qcow2", export_format="QCOW2"
    )
    uri_details = oci.core.models.ExportImageViaObjectStorageUriDetails(
        destination_uri=f"https://objectstorage.us-ashburn-1.oraclecloud.com/n/{a['namespace']}/b/{a['bucket']}/o/oci/by-uri.vmdk",
        export_format="VMDK",
    )
    for name, details, key in [("tuple", tuple_details, "oci/by-tuple.qcow2"), ("uri", uri_details, "oci/by-uri.vmdk")]:
        r = composite.export_image_and_wait_for_work_request(
            a["image"],
            details,
            work_request_states=["SUCCEEDED", "FAILED"],
            waiter_kwargs={"max_wait_seconds": WAIT, "max_interval_seconds": 1},
        )
        assert r.data.status == "SUCCEEDED", r.data
        assert r.data.percent_complete == 100.0, r.data
        download(a, a["bucket"], key, f"{a['out']}.{name}")
        out[name] = {"status": r.data.status, "key": key}
    img = compute.get_image(a["image"]).data
    out["image_state"] = img.lifecycle_state
    # if-match that is not the image's etag: 412 NoEtagMatch.
    try:
        compute.export_image(a["image"], tuple_details, if_match="not-the-etag")
        raise SystemExit("a wrong if-match was accepted")
    except oci.exceptions.ServiceError as e:
        out["if_match"] = [e.status, e.code]
    # The same opc-retry-token: the same work request.
    d = oci.core.models.ExportImageViaObjectStorageTupleDetails(
        bucket_name=a["bucket"], namespace_name=a["namespace"], object_name="oci/retry.qcow2", export_format="QCOW2"
    )
    w1 = compute.export_image(a["image"], d, opc_retry_token="retry-token-1").headers["opc-work-request-id"]
    w2 = compute.export_image(a["image"], d, opc_retry_token="retry-token-1").headers["opc-work-request-id"]
    out["retry_same"] = w1 == w2
    d.object_name = "oci/other.qcow2"
    try:
        compute.export_image(a["image"], d, opc_retry_token="retry-token-1")
        raise SystemExit("a reused retry token with another request was accepted")
    except oci.exceptions.ServiceError as e:
        out["retry_conflict"] = [e.status, e.code]
    oci.wait_until(wr, wr.get_work_request(w1), "status", "SUCCEEDED", max_wait_seconds=WAIT, max_interval_seconds=1)
    # get_image's etag, then export_image(if_match=etag): accepted.
    got = compute.get_image(a["image"])
    out["etag"] = got.headers.get("etag")
    d.object_name = "oci/if-match.qcow2"
    w3 = compute.export_image(a["image"], d, if_match=out["etag"]).headers["opc-work-request-id"]
    oci.wait_until(wr, wr.get_work_request(w3), "status", "SUCCEEDED", max_wait_seconds=WAIT, max_interval_seconds=1)
    out["if_match_etag"] = "SUCCEEDED"
    return out


def oci_auth(a):
    """Wrong key, tampered body, stale date: ServiceError 401 each."""
    import oci
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    details = oci.core.models.ExportImageViaObjectStorageTupleDetails(
        bucket_name=a["bucket"], namespace_name=a["namespace"], object_name="oci/auth.qcow2", export_format="QCOW2"
    )
    out = {}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = oci.signer.Signer(a["tenancy"], a["user"], a["fingerprint"], None, private_key_content=other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode())
    good = oci.signer.Signer(a["tenancy"], a["user"], a["fingerprint"], a["key_file"])

    class Tamper:
        def __call__(self, request, **kw):
            good(request, **kw)
            body = request.body if isinstance(request.body, bytes) else request.body.encode()
            request.body = body.replace(b"auth.qcow2", b"evil.qcow2")
            return request

    class Stale:
        def __call__(self, request, **kw):
            then = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
            request.headers["date"] = then.strftime("%a, %d %b %Y %H:%M:%S GMT")
            return good(request, **kw)

    for name, signer in [("wrong_key", wrong), ("tampered", Tamper()), ("stale", Stale())]:
        try:
            oci_compute(a, signer=signer).export_image(a["image"], details)
            raise SystemExit(f"{name}: accepted")
        except oci.exceptions.ServiceError as e:
            out[name] = [e.status, e.code]
    return out


def huawei_clients(a, sk=None, handler=None):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkevs.v2 import EvsClient
    from huaweicloudsdkims.v2 import ImsClient

    creds = BasicCredentials(a["ak"], sk or a["sk"], a["project"])
    config = HttpConfig.get_default_config()
    config.retry_times = 0
    ims = ImsClient.new_builder().with_credentials(creds).with_endpoints([a["endpoint"]]).with_http_config(config)
    evs = EvsClient.new_builder().with_credentials(creds).with_endpoint(a["endpoint"]).with_http_config(config)
    if handler is not None:
        ims = ims.with_http_handler(handler)
        evs = evs.with_http_handler(handler)
    return ims.build(), evs.build()


def huawei_wait(ims, job_id):
    from huaweicloudsdkims.v2 import ShowJobRequest, ShowJobProgressRequest

    deadline = time.time() + WAIT
    while time.time() < deadline:
        j = ims.show_job(ShowJobRequest(job_id=job_id))
        if j.status in ("SUCCESS", "FAIL"):
            p = ims.show_job_progress(ShowJobProgressRequest(job_id=job_id))
            assert p.status == j.status, (p, j)
            return j
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not end")


def huawei_export(a):
    """IMS ExportImage → ShowJob until SUCCESS; EVS CinderExportToImage → the new image active
    → exported through IMS."""
    from huaweicloudsdkevs.v2 import (
        CinderExportToImageOption,
        CinderExportToImageRequest,
        CinderExportToImageRequestBody,
    )
    from huaweicloudsdkims.v2 import ExportImageRequest, ExportImageRequestBody, ListImagesRequest

    ims, evs = huawei_clients(a)
    r = ims.export_image(ExportImageRequest(
        image_id=a["image"], body=ExportImageRequestBody(bucket_url=f"{a['bucket']}:ims/image.qcow2", file_format="qcow2")))
    j = huawei_wait(ims, r.job_id)
    assert j.status == "SUCCESS", j
    download(a, a["bucket"], "ims/image.qcow2", a["out"] + ".ims")
    up = evs.cinder_export_to_image(CinderExportToImageRequest(
        volume_id=a["volume"],
        body=CinderExportToImageRequestBody(os_volume_upload_image=CinderExportToImageOption(
            image_name="data-volume-image", disk_format="qcow2", container_format="bare", force=False))))
    info = up.os_volume_upload_image
    assert info.status == "uploading", info
    assert info.volume_type.name, info
    new_image = info.image_id
    deadline = time.time() + WAIT
    states = []
    while time.time() < deadline:
        imgs = ims.list_images(ListImagesRequest(id=new_image)).images
        states.append(imgs[0].status if imgs else None)
        if states[-1] == "active":
            break
        time.sleep(0.2)
    assert states[-1] == "active", states
    r = ims.export_image(ExportImageRequest(
        image_id=new_image, body=ExportImageRequestBody(bucket_url=f"{a['bucket']}:evs/volume.vhd", file_format="vhd")))
    j = huawei_wait(ims, r.job_id)
    assert j.status == "SUCCESS", j
    download(a, a["bucket"], "evs/volume.vhd", a["out"] + ".evs")
    return {"ims_job": j.job_id, "new_image": new_image, "states": sorted(set(s for s in states if s))}


def huawei_auth(a):
    """Wrong SK, tampered body, stale X-Sdk-Date: ClientRequestException 401 each."""
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_handler import HttpHandler
    from huaweicloudsdkims.v2 import ExportImageRequest, ExportImageRequestBody

    req = ExportImageRequest(image_id=a["image"], body=ExportImageRequestBody(
        bucket_url=f"{a['bucket']}:auth/x.qcow2", file_format="qcow2"))
    out = {}

    def tamper(request, **_):
        request.body = request.body.replace(b"auth/x", b"evil/x")

    def stale(request, **_):
        pass

    cases = [("wrong_secret", huawei_clients(a, sk="not-the-secret")[0]),
             ("tampered", huawei_clients(a, handler=HttpHandler().add_request_handler(tamper))[0])]
    for name, ims in cases:
        try:
            ims.export_image(req)
            raise SystemExit(f"{name}: accepted")
        except ClientRequestException as e:
            out[name] = [e.status_code, e.error_code]
    # The signer keeps an X-Sdk-Date the request already has.
    import huaweicloudsdkcore.signer.signer as signer_module

    real = signer_module.Signer._process_header_time

    def old_time(request):
        then = datetime.datetime.utcnow() - datetime.timedelta(minutes=20)
        request.header_params["X-Sdk-Date"] = then.strftime("%Y%m%dT%H%M%SZ")
        return real(request)

    signer_module.Signer._process_header_time = staticmethod(old_time)
    try:
        huawei_clients(a)[0].export_image(req)
        raise SystemExit("stale: accepted")
    except ClientRequestException as e:
        out["stale"] = [e.status_code, e.error_code]
    finally:
        signer_module.Signer._process_header_time = real
    return out


def http(method, url, body=None, headers=None):
    """(status, headers by lower-case name, body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def zstack_login(a, password=None):
    pw = hashlib.sha512((password or a["password"]).encode()).hexdigest()
    return http("PUT", a["endpoint"] + "/zstack/v1/accounts/login",
                {"logInByAccount": {"accountName": a["account"], "password": pw}})


def zstack_export(a):
    """Login, export, poll the absolute location to 200, download imageUrl (whole and by
    Range); a failing export polls as 503."""
    status, _, body = zstack_login(a)
    assert status == 200, body
    session = json.loads(body)["inventory"]["uuid"]
    auth = {"Authorization": f"OAuth {session}"}
    out = {}
    for name, image, fmt in [("ok", a["image"], "qcow2"), ("broken", a["broken"], "raw")]:
        job = hashlib.md5(name.encode() + str(time.time()).encode()).hexdigest()
        status, _, body = http("PUT", f"{a['endpoint']}/zstack/v1/backup-storage/{a['bs']}/actions",
                               {"exportImageFromBackupStorage": {"imageUuid": image, "exportFormat": fmt}, "systemTags": []},
                               {**auth, "X-Job-UUID": job})
        assert status == 202, (status, body)
        location = json.loads(body)["location"]
        assert location.startswith("http://"), location
        deadline = time.time() + WAIT
        while time.time() < deadline:
            status, _, body = http("GET", location, headers=auth)
            if status != 202:
                break
            time.sleep(0.2)
        out[name] = {"status": status, "body": json.loads(body)}
    result = out["ok"]["body"]
    status, _, data = http("GET", result["imageUrl"])
    assert status == 200, status
    with open(a["out"], "wb") as f:
        f.write(data)
    out["md5_matches"] = hashlib.md5(data).hexdigest() == result["exportMd5Sum"]
    status, headers, part = http("GET", result["imageUrl"], headers={"Range": "bytes=100-1123"})
    out["range"] = [status, part == data[100:1124], headers.get("content-range")]
    status, headers, _ = http("HEAD", result["imageUrl"])
    out["head"] = [status, headers.get("content-length") == str(len(data))]
    return out


def zstack_auth(a):
    """Wrong password: 401; no session, an unknown session: 401."""
    out = {}
    status, _, body = zstack_login(a, password="not-the-password")
    out["wrong_password"] = [status, json.loads(body)["error"]["code"]]
    req = {"exportImageFromBackupStorage": {"imageUuid": a["image"], "exportFormat": "qcow2"}}
    url = f"{a['endpoint']}/zstack/v1/backup-storage/{a['bs']}/actions"
    for name, headers in [("no_session", {}), ("unknown_session", {"Authorization": "OAuth " + "0" * 32})]:
        status, _, body = http("PUT", url, req, headers)
        out[name] = [status, json.loads(body)["error"]["code"]]
    return out


def zstack_expiry(a):
    """A session works, then (its lifetime is one second here) no longer does."""
    status, _, body = zstack_login(a)
    assert status == 200, body
    auth = {"Authorization": "OAuth " + json.loads(body)["inventory"]["uuid"]}
    url = f"{a['endpoint']}/zstack/v1/backup-storage/{a['bs']}/actions"
    req = {"exportImageFromBackupStorage": {"imageUuid": a["image"], "exportFormat": "raw"}}
    fresh, _, _ = http("PUT", url, req, auth)
    time.sleep(2.1)
    status, _, body = http("PUT", url, req, auth)
    return {"fresh": fresh, "expired": [status, json.loads(body)["error"]["code"]]}


def zstack_across(a):
    """Log in on the first instance, export through the second, poll through the first, log
    out on the first: the second no longer knows the session."""
    first, second = a["endpoints"]
    status, _, body = zstack_login({**a, "endpoint": first})
    assert status == 200, body
    session = json.loads(body)["inventory"]["uuid"]
    auth = {"Authorization": f"OAuth {session}"}
    job = hashlib.md5(str(time.time()).encode()).hexdigest()
    req = {"exportImageFromBackupStorage": {"imageUuid": a["image"], "exportFormat": "raw"}}
    status, _, body = http("PUT", f"{second}/zstack/v1/backup-storage/{a['bs']}/actions", req,
                           {**auth, "X-Job-UUID": job})
    assert status == 202, (status, body)
    deadline = time.time() + WAIT
    while time.time() < deadline:
        status, _, body = http("GET", f"{first}/zstack/v1/api-jobs/{job}", headers=auth)
        if status != 202:
            break
        time.sleep(0.2)
    result = json.loads(body)
    status_dl, _, data = http("GET", result["imageUrl"])
    with open(a["out"], "wb") as f:
        f.write(data)
    http("DELETE", f"{first}/zstack/v1/accounts/sessions/{session}", headers=auth)
    after, _, _ = http("GET", f"{second}/zstack/v1/api-jobs/{job}", headers=auth)
    return {"poll": status, "download": status_dl, "after_logout": after,
            "md5_matches": hashlib.md5(data).hexdigest() == result["exportMd5Sum"]}


def zstack_accounts(a):
    """Accounts `account` (A) and `account_b` (B): B polling A's job gets what an unknown job
    gets; B naming its job as A did gets its own job; each polls its own to the end; the
    published files' names carry more than the image and format."""
    def session(name, pw):
        status, _, body = zstack_login({**a, "account": name}, password=pw)
        assert status == 200, body
        return {"Authorization": "OAuth " + json.loads(body)["inventory"]["uuid"]}

    A, B = session(a["account"], a["password"]), session(a["account_b"], a["password_b"])
    url = f"{a['endpoint']}/zstack/v1/backup-storage/{a['bs']}/actions"
    req = {"exportImageFromBackupStorage": {"imageUuid": a["image"], "exportFormat": "raw"}}
    job = hashlib.md5(str(time.time()).encode()).hexdigest()
    out = {}

    def poll(auth, name):
        deadline = time.time() + WAIT
        while time.time() < deadline:
            status, _, body = http("GET", f"{a['endpoint']}/zstack/v1/api-jobs/{name}", headers=auth)
            if status != 202:
                return status, json.loads(body)
            time.sleep(0.2)
        raise SystemExit(f"job {name} did not end")

    status, _, body = http("PUT", url, req, {**A, "X-Job-UUID": job})
    assert status == 202, (status, body)
    st, body = http("GET", f"{a['endpoint']}/zstack/v1/api-jobs/{job}", headers=B)[:2], None
    out["b_polls_a"] = st[0]
    out["b_polls_unknown"] = http("GET", f"{a['endpoint']}/zstack/v1/api-jobs/{'f' * 32}", headers=B)[0]
    status, _, body = http("PUT", url, req, {**B, "X-Job-UUID": job})
    out["b_same_name"] = status
    ra, rb = poll(A, job), poll(B, job)
    out["a"] = [ra[0], ra[1].get("imageUrl")]
    out["b"] = [rb[0], rb[1].get("imageUrl")]
    # A's private image, exported by B: what an image not on the backup storage gets.
    for name, image in [("b_exports_a_image", a["image_private"]), ("b_exports_unknown_image", "0" * 32)]:
        status, _, body = http("PUT", url, {"exportImageFromBackupStorage": {"imageUuid": image, "exportFormat": "raw"}}, B)
        out[name] = [status, json.loads(body)["error"]["code"]]
    return out


def oci_accounts(a):
    """Two OCI tenancies, A (tenancy/fingerprint/key_file) and B (tenancy_b, fingerprint_b,
    key_file_b): B's get_work_request, get_image and export_image of A's private image answer
    as for unknown ids; each lists only its own work requests; an image shared with B exports for B; B into a bucket it was not
    granted is refused; one opc-retry-token from A and from B makes two work requests."""
    import oci

    A = oci_compute(a)
    b = {**a, "tenancy": a["tenancy_b"], "fingerprint": a["fingerprint_b"], "key_file": a["key_file_b"]}
    B = oci_compute(b)
    wr_a = oci.work_requests.WorkRequestClient(oci_config(a), service_endpoint=a["endpoint"])
    wr_b = oci.work_requests.WorkRequestClient(oci_config(b), service_endpoint=a["endpoint"])

    def code(f):
        try:
            f()
        except oci.exceptions.ServiceError as e:
            return [e.status, e.code]
        return None

    def details(bucket, name):
        return oci.core.models.ExportImageViaObjectStorageTupleDetails(
            bucket_name=bucket, namespace_name=a["namespace"], object_name=name, export_format="QCOW2")

    out = {}
    wa = A.export_image(a["image_a"], details(a["bucket_a"], "a/a.qcow2"),
                        opc_retry_token="same-retry-token").headers["opc-work-request-id"]
    unknown_wr = "ocid1.coreservicesworkrequest.oc1..unknown"
    out["b_gets_a_work_request"] = code(lambda: wr_b.get_work_request(wa))
    out["b_gets_unknown_work_request"] = code(lambda: wr_b.get_work_request(unknown_wr))
    out["b_gets_a_image"] = code(lambda: B.get_image(a["image_a"]))
    out["b_gets_unknown_image"] = code(lambda: B.get_image("ocid1.image.oc1..unknown"))
    out["b_exports_a_image"] = code(lambda: B.export_image(a["image_a"], details(a["bucket"], "b/x.qcow2")))
    out["b_exports_unknown_image"] = code(lambda: B.export_image("ocid1.image.oc1..unknown", details(a["bucket"], "b/x.qcow2")))
    out["b_into_a_bucket"] = code(lambda: B.export_image(a["image_shared"], details(a["bucket_a"], "b/x.qcow2")))
    wb = B.export_image(a["image_shared"], details(a["bucket"], "b/b.qcow2"),
                        opc_retry_token="same-retry-token").headers["opc-work-request-id"]
    out["two_work_requests"] = wa != wb
    out["a_status"] = oci.wait_until(wr_a, wr_a.get_work_request(wa), "status", "SUCCEEDED",
                                     max_wait_seconds=WAIT, max_interval_seconds=1).data.status
    out["b_status"] = oci.wait_until(wr_b, wr_b.get_work_request(wb), "status", "SUCCEEDED",
                                     max_wait_seconds=WAIT, max_interval_seconds=1).data.status
    # Each tenancy lists its own work requests only (paged one at a time, as the SDK follows
    # opc-next-page), and by resource.
    A.export_image(a["image_a"], details(a["bucket_a"], "a/second.qcow2"))
    listed = lambda c, **kw: [w.id for w in oci.pagination.list_call_get_all_results(
        c.list_work_requests, a["compartment"], limit=1, **kw).data]
    out["a_lists"] = listed(wr_a)
    out["b_lists"] = listed(wr_b)
    out["a_lists_shared"] = listed(wr_a, resource_id=a["image_shared"])
    out["b_lists_shared"] = listed(wr_b, resource_id=a["image_shared"])
    out["wa"], out["wb"] = wa, wb
    return out


def huawei_accounts(a):
    """Two Huawei accounts, A (ak/sk) and B (ak_b/sk_b): B's show_job of A's job, B's export of
    A's image and B's upload of A's volume answer as for unknown ids; B's image list omits A's
    image; B into A's bucket is refused; a shared image exports for B."""
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkevs.v2 import (
        CinderExportToImageOption,
        CinderExportToImageRequest,
        CinderExportToImageRequestBody,
    )
    from huaweicloudsdkims.v2 import ExportImageRequest, ExportImageRequestBody, ListImagesRequest, ShowJobRequest

    ims_a, _ = huawei_clients(a)
    ims_b, evs_b = huawei_clients({**a, "ak": a["ak_b"]}, sk=a["sk_b"])

    def code(f):
        try:
            f()
        except ClientRequestException as e:
            return [e.status_code, e.error_code]
        return None

    def export(ims, image, url):
        return ims.export_image(ExportImageRequest(
            image_id=image, body=ExportImageRequestBody(bucket_url=url, file_format="qcow2")))

    out = {}
    ja = export(ims_a, a["image_a"], f"{a['bucket_a']}:a/hw-a.qcow2").job_id
    out["b_shows_a_job"] = code(lambda: ims_b.show_job(ShowJobRequest(job_id=ja)))
    out["b_shows_unknown_job"] = code(lambda: ims_b.show_job(ShowJobRequest(job_id="ff" * 16)))
    out["b_exports_a_image"] = code(lambda: export(ims_b, a["image_a"], f"{a['bucket']}:b/x.qcow2"))
    out["b_exports_unknown_image"] = code(lambda: export(ims_b, "0" * 32, f"{a['bucket']}:b/x.qcow2"))
    out["b_into_a_bucket"] = code(lambda: export(ims_b, a["image_shared"], f"{a['bucket_a']}:b/x.qcow2"))
    out["b_lists"] = [i.id for i in ims_b.list_images(ListImagesRequest()).images]
    out["a_lists"] = [i.id for i in ims_a.list_images(ListImagesRequest()).images]

    def upload(volume):
        return evs_b.cinder_export_to_image(CinderExportToImageRequest(
            volume_id=volume,
            body=CinderExportToImageRequestBody(os_volume_upload_image=CinderExportToImageOption(
                image_name="x", disk_format="qcow2", container_format="bare", force=False))))

    out["b_uploads_a_volume"] = code(lambda: upload(a["volume_a"]))
    out["b_uploads_unknown_volume"] = code(lambda: upload("0" * 32))
    jb = export(ims_b, a["image_shared"], f"{a['bucket']}:b/hw-b.qcow2").job_id
    out["a_status"] = huawei_wait(ims_a, ja).status
    out["b_status"] = huawei_wait(ims_b, jb).status
    return out


def aws_export_or_error(a):
    """export_image of `image` into `bucket`/`prefix`: the task's end status, or the error."""
    from botocore.exceptions import ClientError

    ec2 = ec2_client(a)
    try:
        tid = ec2.export_image(DiskImageFormat="RAW", ImageId=a["image"],
                               S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": a["prefix"]})["ExportImageTaskId"]
    except ClientError as e:
        return {"error": [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]}
    t = aws_wait(ec2, tid, ["completed", "deleted"])
    return {"status": t["Status"], "key": f"{a['prefix']}{tid}.raw"}


def poll_load(a):
    """`clients` threads call DescribeExportImageTasks on `task` for `seconds`; latencies.
    Closed loop (each thread calls again as soon as answered), or, with `interval`, paced as
    pollers are: each thread calls every `interval` seconds on a fixed timetable (phases
    spread over the interval), and a call's latency counts from its scheduled time, so that a
    late start counts against the service (no coordinated omission)."""
    import threading

    ec2 = [ec2_client(a) for _ in range(a["clients"])]
    lat, failures = [], []
    stop = time.time() + a["seconds"]
    interval = a.get("interval")

    def run(c, phase):
        due = time.perf_counter() + (phase if interval else 0)
        while time.time() < stop:
            if interval:
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                t, due = due, due + interval
            else:
                t = time.perf_counter()
            try:
                c.describe_export_image_tasks(ExportImageTaskIds=[a["task"]])
                lat.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(str(e))

    n = len(ec2)
    threads = [threading.Thread(target=run, args=(c, (interval or 0) * i / n))
               for i, c in enumerate(ec2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    out = {"requests": len(lat), "failures": len(failures), "p50": p(0.5), "p99": p(0.99), "first_failure": failures[:1]}
    if a.get("latencies"):
        out["latencies"] = lat
    return out


def fleet_round_robin(a):
    """`count` exports, each sent to the next of `endpoints` and the next API in turn (EC2
    RAW, OCI QCOW2, IMS VHD); each polled through every instance until it ends, the final
    states compared across instances; the objects downloaded into `out`."""
    import oci
    from huaweicloudsdkims.v2 import ExportImageRequest, ExportImageRequestBody, ShowJobRequest

    jobs = []
    for i in range(a["count"]):
        endpoint = a["endpoints"][i % len(a["endpoints"])]
        api = ["aws", "oci", "huawei"][(i // len(a["endpoints"])) % 3]
        e = {**a, "endpoint": endpoint}
        if api == "aws":
            r = ec2_client(e).export_image(
                DiskImageFormat="RAW", ImageId=a["image"],
                S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": f"fleet/aws-{i}/"})
            job = r["ExportImageTaskId"]
            key, fmt = f"fleet/aws-{i}/{job}.raw", "raw"
        elif api == "oci":
            d = oci.core.models.ExportImageViaObjectStorageTupleDetails(
                bucket_name=a["bucket"], namespace_name=a["namespace"],
                object_name=f"fleet/oci-{i}.qcow2", export_format="QCOW2")
            job = oci_compute(e).export_image(a["oci_image"], d).headers["opc-work-request-id"]
            key, fmt = f"fleet/oci-{i}.qcow2", "qcow2"
        else:
            ims, _ = huawei_clients(e)
            job = ims.export_image(ExportImageRequest(image_id=a["hw_image"], body=ExportImageRequestBody(
                bucket_url=f"{a['bucket']}:fleet/hw-{i}.vhd", file_format="vhd"))).job_id
            key, fmt = f"fleet/hw-{i}.vhd", "vpc"
        jobs.append({"api": api, "job": job, "key": key, "format": fmt, "sent_to": endpoint})

    def status(api, endpoint, job):
        e = {**a, "endpoint": endpoint}
        if api == "aws":
            return ec2_client(e).describe_export_image_tasks(ExportImageTaskIds=[job])["ExportImageTasks"][0]["Status"]
        if api == "oci":
            wr = oci.work_requests.WorkRequestClient(oci_config(e), service_endpoint=endpoint)
            return wr.get_work_request(job).data.status
        ims, _ = huawei_clients(e)
        return ims.show_job(ShowJobRequest(job_id=job)).status

    ended = {"aws": ("completed", "deleted"), "oci": ("SUCCEEDED", "FAILED", "CANCELED"), "huawei": ("SUCCESS", "FAIL")}
    deadline = time.time() + WAIT
    n = 0
    for j in jobs:
        while True:
            # Each poll goes to the next instance.
            st = status(j["api"], a["endpoints"][n % len(a["endpoints"])], j["job"])
            n += 1
            if st in ended[j["api"]]:
                break
            if time.time() > deadline:
                raise SystemExit(f"{j} did not end")
            time.sleep(0.1)
        j["seen"] = [status(j["api"], ep, j["job"]) for ep in a["endpoints"]]
        j["file"] = f"{a['out']}/{j['key'].replace('/', '_')}"
        download(a, a["bucket"], j["key"], j["file"])
    return {"exports": jobs}


def aws_accounts(a):
    """Two AWS accounts, A (keys key/secret) and B (key_b/secret_b). A exports its private
    image into its own bucket; B's listing, describe and cancel of A's task, and B's export of
    A's image, answer as for ids that do not exist; an image shared with B exports for B; B
    writing into A's bucket is refused; the same ClientToken from A and B makes two tasks; an
    account with its own storage keys gets its object in its own storage."""
    from botocore.exceptions import ClientError

    A = ec2_client(a)
    B = ec2_client({**a, "key": a["key_b"]}, secret=a["secret_b"])

    def code(f):
        try:
            f()
        except ClientError as e:
            return [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]
        return None

    loc = {"S3Bucket": a["bucket_a"], "S3Prefix": "a/"}
    ta = A.export_image(DiskImageFormat="RAW", ImageId=a["image_a"], S3ExportLocation=loc,
                        ClientToken="same-token")["ExportImageTaskId"]
    out = {"task_a": ta}
    out["b_lists"] = [t["ExportImageTaskId"] for t in B.describe_export_image_tasks()["ExportImageTasks"]]
    out["a_lists"] = [t["ExportImageTaskId"] for t in A.describe_export_image_tasks()["ExportImageTasks"]]
    unknown = "export-ami-0123456789abcdef0"
    out["b_describes_a"] = code(lambda: B.describe_export_image_tasks(ExportImageTaskIds=[ta]))
    out["b_describes_unknown"] = code(lambda: B.describe_export_image_tasks(ExportImageTaskIds=[unknown]))
    out["b_cancels_a"] = code(lambda: B.cancel_export_task(ExportTaskId=ta))
    out["b_cancels_unknown"] = code(lambda: B.cancel_export_task(ExportTaskId=unknown))
    out["b_exports_a_image"] = code(lambda: B.export_image(
        DiskImageFormat="RAW", ImageId=a["image_a"], S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "b/"}))
    out["b_exports_unknown_image"] = code(lambda: B.export_image(
        DiskImageFormat="RAW", ImageId="ami-00000000000000000", S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "b/"}))
    out["b_into_a_bucket"] = code(lambda: B.export_image(
        DiskImageFormat="RAW", ImageId=a["image_shared"], S3ExportLocation={"S3Bucket": a["bucket_a"], "S3Prefix": "b/"}))
    out["b_into_a_bucket_dry"] = code(lambda: B.export_image(
        DiskImageFormat="RAW", ImageId=a["image_shared"], DryRun=True,
        S3ExportLocation={"S3Bucket": a["bucket_a"], "S3Prefix": "b/"}))
    tb = B.export_image(DiskImageFormat="RAW", ImageId=a["image_shared"], ClientToken="same-token",
                        S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "b/"})["ExportImageTaskId"]
    out["task_b"] = tb
    out["a_status"] = aws_wait(A, ta, ["completed", "deleted"])["Status"]
    out["b_status"] = aws_wait(B, tb, ["completed", "deleted"])["Status"]
    out["a_key"] = f"a/{ta}.raw"
    out["b_key"] = f"b/{tb}.raw"
    # A third account with its own storage and keys.
    if a.get("key_c"):
        C = ec2_client({**a, "key": a["key_c"]}, secret=a["secret_c"])
        tc = C.export_image(DiskImageFormat="RAW", ImageId=a["image_shared"],
                            S3ExportLocation={"S3Bucket": a["bucket"], "S3Prefix": "c/"})["ExportImageTaskId"]
        out["c_status"] = aws_wait(C, tc, ["completed", "deleted"])["Status"]
        out["c_key"] = f"c/{tc}.raw"
    return out


def outage_ids(a):
    """The ids an outage is probed with: an OCI work request, a Huawei job and a ZStack
    session and API job of small exports (their states do not matter)."""
    import oci
    from huaweicloudsdkims.v2 import ExportImageRequest, ExportImageRequestBody

    compute = oci_compute(a)
    details = oci.core.models.ExportImageViaObjectStorageTupleDetails(
        bucket_name=a["bucket"], namespace_name="mynamespace", object_name="outage/oci.qcow2",
        export_format="QCOW2")
    wr = compute.export_image(a["oci_image"], details).headers["opc-work-request-id"]
    ims, _ = huawei_clients(a)
    job = ims.export_image(ExportImageRequest(image_id=a["hw_image"], body=ExportImageRequestBody(
        bucket_url=f"{a['bucket']}:outage/hw.vhd", file_format="vhd"))).job_id
    status, _, body = zstack_login(a)
    assert status == 200, body
    session = json.loads(body)["inventory"]["uuid"]
    auth = {"Authorization": f"OAuth {session}"}
    status, _, body = http("PUT", f"{a['endpoint']}/zstack/v1/backup-storage/{a['backup_storage']}/actions",
                           {"exportImageFromBackupStorage": {"imageUuid": a["zs_image"]}}, auth)
    assert status == 202, body
    return {"wr": wr, "job": job, "session": session, "location": json.loads(body)["location"]}


def outage_calls(a):
    """One call of each provider's SDK (no retries) and /healthz of each instance: what each
    answered, as [status, code]."""
    import oci
    from botocore.exceptions import ClientError
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, ServerResponseException
    from huaweicloudsdkims.v2 import ShowJobRequest

    out = {}
    try:
        ec2_client(a).describe_export_image_tasks(ExportImageTaskIds=[a["task"]])
        out["aws"] = [200, None]
    except ClientError as e:
        out["aws"] = [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]
    wr = oci.work_requests.WorkRequestClient(oci_config(a), service_endpoint=a["endpoint"],
                                             retry_strategy=oci.retry.NoneRetryStrategy())
    try:
        wr.get_work_request(a["wr"])
        out["oci"] = [200, None]
    except oci.exceptions.ServiceError as e:
        out["oci"] = [e.status, e.code]
    ims, _ = huawei_clients(a)
    try:
        ims.show_job(ShowJobRequest(job_id=a["job"]))
        out["huawei"] = [200, None]
    except (ClientRequestException, ServerResponseException) as e:
        out["huawei"] = [e.status_code, e.error_code]
    status, _, body = http("GET", a["location"], headers={"Authorization": f"OAuth {a['session']}"})
    try:
        code = json.loads(body).get("error", {}).get("code")
    except ValueError:
        code = None
    out["zstack"] = [status, code]
    out["healthz"] = [http("GET", e + "/healthz")[0] for e in a["endpoints"]]
    return out


if __name__ == "__main__":
    scenario, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[scenario](args)))
