"""Parsing object-store locations (imageml_core.uris)."""

from __future__ import annotations

import pytest

from imageml_core.uris import InvalidS3Uri, S3Uri, parse_s3_uri

ENDPOINT = "http://127.0.0.1:8333"


# ---------------------------------------------------------------------- s3:// form
def test_s3_scheme_bucket_and_key() -> None:
    uri = parse_s3_uri("s3://my-bucket/raw/2024/img_001.jpg")
    assert uri == S3Uri("my-bucket", "raw/2024/img_001.jpg")
    assert uri.bucket == "my-bucket"
    assert uri.key == "raw/2024/img_001.jpg"
    assert str(uri) == "s3://my-bucket/raw/2024/img_001.jpg"


def test_s3_scheme_bucket_only_and_trailing_slash() -> None:
    assert parse_s3_uri("s3://my-bucket") == S3Uri("my-bucket", "")
    assert parse_s3_uri("s3://my-bucket/") == S3Uri("my-bucket", "")
    assert parse_s3_uri("s3://my-bucket/raw/") == S3Uri("my-bucket", "raw/")


def test_s3a_scheme_and_uppercase_scheme_accepted() -> None:
    assert parse_s3_uri("s3a://data.lake/a/b") == S3Uri("data.lake", "a/b")
    assert parse_s3_uri("S3://my-bucket/k") == S3Uri("my-bucket", "k")


@pytest.mark.parametrize(
    "key",
    [
        "raw/what?.jpg",
        "raw/photo#1.jpg",
        "raw/my holiday photo.jpg",
        "raw/a?b=c&d#frag with space/x.png",
        "raw/%20literal-percent.jpg",
        "raw/ünïcode/照片.jpg",
    ],
)
def test_s3_scheme_keeps_special_characters_verbatim(key: str) -> None:
    uri = parse_s3_uri(f"s3://my-bucket/{key}")
    assert uri.bucket == "my-bucket"
    assert uri.key == key
    # str() gives back exactly what we parsed, so it round-trips.
    assert parse_s3_uri(str(uri)) == uri


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_s3_uri("  s3://my-bucket/raw/x.jpg\n") == S3Uri("my-bucket", "raw/x.jpg")


# ---------------------------------------------------------------------- AWS https forms
def test_virtual_hosted_regional() -> None:
    uri = parse_s3_uri("https://my-bucket.s3.us-west-2.amazonaws.com/raw/a/b.jpg")
    assert uri == S3Uri("my-bucket", "raw/a/b.jpg")


def test_virtual_hosted_legacy_global_and_dash_region() -> None:
    assert parse_s3_uri("https://my-bucket.s3.amazonaws.com/k/x.png") == S3Uri(
        "my-bucket", "k/x.png"
    )
    assert parse_s3_uri("https://my-bucket.s3-eu-west-1.amazonaws.com/k") == S3Uri("my-bucket", "k")


def test_virtual_hosted_dotted_bucket() -> None:
    assert parse_s3_uri("https://data.lake.s3.us-east-1.amazonaws.com/x") == S3Uri("data.lake", "x")


def test_virtual_hosted_percent_encoded_key_is_decoded() -> None:
    uri = parse_s3_uri("https://my-bucket.s3.us-west-2.amazonaws.com/raw/my%20file%3F%231.jpg")
    assert uri == S3Uri("my-bucket", "raw/my file?#1.jpg")


def test_path_style_aws() -> None:
    assert parse_s3_uri("https://s3.us-west-2.amazonaws.com/my-bucket/raw/x.jpg") == S3Uri(
        "my-bucket", "raw/x.jpg"
    )
    assert parse_s3_uri("https://s3.amazonaws.com/my-bucket/raw/x.jpg") == S3Uri(
        "my-bucket", "raw/x.jpg"
    )
    assert parse_s3_uri("https://s3-us-west-2.amazonaws.com/my-bucket/k") == S3Uri("my-bucket", "k")


def test_path_style_aws_without_bucket_is_refused() -> None:
    with pytest.raises(InvalidS3Uri, match="without a bucket"):
        parse_s3_uri("https://s3.us-west-2.amazonaws.com/")


# ---------------------------------------------------------------------- S3-compatible endpoint
def test_endpoint_path_style_accepted_when_endpoint_matches() -> None:
    uri = parse_s3_uri("http://127.0.0.1:8333/my-bucket/raw/x y.jpg", ENDPOINT)
    assert uri == S3Uri("my-bucket", "raw/x y.jpg")
    # Trailing slash on the configured endpoint does not matter.
    assert parse_s3_uri("http://127.0.0.1:8333/my-bucket/k", ENDPOINT + "/") == S3Uri(
        "my-bucket", "k"
    )


def test_endpoint_path_style_refused_without_or_with_other_endpoint() -> None:
    with pytest.raises(InvalidS3Uri, match="S3_ENDPOINT_URL"):
        parse_s3_uri("http://127.0.0.1:8333/my-bucket/k")
    with pytest.raises(InvalidS3Uri, match="S3_ENDPOINT_URL"):
        parse_s3_uri("http://127.0.0.1:9000/my-bucket/k", ENDPOINT)


def test_endpoint_path_style_without_bucket_refused() -> None:
    with pytest.raises(InvalidS3Uri, match="without a bucket"):
        parse_s3_uri("http://127.0.0.1:8333/", ENDPOINT)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_is_refused(value: str) -> None:
    with pytest.raises(InvalidS3Uri, match="empty"):
        parse_s3_uri(value)


def test_unsupported_scheme() -> None:
    with pytest.raises(InvalidS3Uri, match="unsupported scheme 'ftp'") as exc:
        parse_s3_uri("ftp://my-bucket/key")
    # The message lists the valid forms.
    assert "s3://bucket/key" in str(exc.value)


def test_no_scheme_refused() -> None:
    with pytest.raises(InvalidS3Uri, match="unsupported scheme"):
        parse_s3_uri("my-bucket/key")


def test_unknown_http_host_mentions_endpoint_setting() -> None:
    with pytest.raises(InvalidS3Uri) as exc:
        parse_s3_uri("http://random.example.com/x")
    message = str(exc.value)
    assert "S3_ENDPOINT_URL" in message
    assert "random.example.com" in message
    assert "not set" in message
    with pytest.raises(InvalidS3Uri) as exc2:
        parse_s3_uri("http://random.example.com/x", ENDPOINT)
    assert ENDPOINT in str(exc2.value)


@pytest.mark.parametrize(
    "value",
    [
        "s3://MyBucket/key",  # uppercase
        "s3://ab/key",  # too short
        "s3://" + "a" * 64 + "/key",  # too long
        "s3://-bucket/key",  # must start with a letter or digit
        "s3://bucket-/key",  # must end with a letter or digit
        "s3://my..bucket/key",  # consecutive dots
        "s3://my_bucket/key",  # underscore
        "s3:///key",  # empty bucket
        "http://127.0.0.1:8333/Bad_Bucket/key",
    ],
)
def test_bad_bucket_names_refused(value: str) -> None:
    with pytest.raises(InvalidS3Uri, match="not a valid bucket name"):
        parse_s3_uri(value, ENDPOINT)


def test_bucket_name_length_bounds_accepted() -> None:
    assert parse_s3_uri("s3://abc/k").bucket == "abc"
    assert parse_s3_uri("s3://" + "a" * 63 + "/k").bucket == "a" * 63


def test_invalid_s3_uri_is_a_value_error() -> None:
    assert issubclass(InvalidS3Uri, ValueError)


# ---------------------------------------------------------------------- S3Uri helpers
def test_prefix() -> None:
    assert S3Uri("b").prefix == ""
    assert S3Uri("b", "raw").prefix == "raw/"
    assert S3Uri("b", "raw/").prefix == "raw/"
    assert S3Uri("b", "raw/sub").prefix == "raw/sub/"


def test_join() -> None:
    assert S3Uri("b", "raw").join("x", "y.jpg") == S3Uri("b", "raw/x/y.jpg")
    assert S3Uri("b", "raw/").join("x", "y.jpg") == S3Uri("b", "raw/x/y.jpg")
    assert S3Uri("b").join("x", "y.jpg") == S3Uri("b", "x/y.jpg")
    # Slashes around parts are normalised and empty parts dropped.
    assert S3Uri("b", "raw").join("/x/", "", "/", "y/z.jpg") == S3Uri("b", "raw/x/y/z.jpg")
    assert str(S3Uri("b", "raw").join("x", "y.jpg")) == "s3://b/raw/x/y.jpg"


def test_contains() -> None:
    raw = S3Uri("b", "raw")
    assert raw.contains(S3Uri("b", "raw/x.jpg"))
    assert raw.contains(S3Uri("b", "raw/deep/er/x.jpg"))
    assert raw.contains(S3Uri("b", "raw"))  # itself
    assert raw.contains(S3Uri("b", "raw/"))
    assert S3Uri("b", "raw/").contains(S3Uri("b", "raw"))
    # A sibling that merely shares the string prefix is not inside.
    assert not raw.contains(S3Uri("b", "raw2/x.jpg"))
    assert not raw.contains(S3Uri("b", "rawx"))
    assert not raw.contains(S3Uri("other", "raw/x.jpg"))
    assert not raw.contains(S3Uri("b", "bronze/x.jpg"))
    assert not S3Uri("b", "raw/x").contains(raw)
    # The bucket root contains everything in the bucket, nothing elsewhere.
    assert S3Uri("b").contains(S3Uri("b", "anything/at/all"))
    assert not S3Uri("b").contains(S3Uri("c", "x"))


def test_relative_key() -> None:
    raw = S3Uri("b", "raw")
    assert raw.relative_key(S3Uri("b", "raw/x/y.jpg")) == "x/y.jpg"
    assert S3Uri("b", "raw/").relative_key(S3Uri("b", "raw/y.jpg")) == "y.jpg"
    assert S3Uri("b").relative_key(S3Uri("b", "raw/y.jpg")) == "raw/y.jpg"
    with pytest.raises(InvalidS3Uri, match="is not under"):
        raw.relative_key(S3Uri("b", "raw2/y.jpg"))
    with pytest.raises(InvalidS3Uri, match="is not under"):
        raw.relative_key(S3Uri("other", "raw/y.jpg"))


def test_s3uri_is_hashable_and_ordered() -> None:
    uris = [S3Uri("b", "z"), S3Uri("a", "y"), S3Uri("b", "a")]
    assert sorted(uris) == [S3Uri("a", "y"), S3Uri("b", "a"), S3Uri("b", "z")]
    assert len({S3Uri("b", "k"), S3Uri("b", "k")}) == 1
