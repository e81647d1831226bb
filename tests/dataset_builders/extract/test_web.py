"""`pathasst extract web` against a loopback HTTP server: figures and captions, politeness
(robots.txt, user agent, per-host rate limit, retries), licences, encodings, the ledger, the CLI."""

import json
import time

import pytest

from pathasst.dataset_builders.extract import web
from pathasst.dataset_builders.extract.web import WebConfig
from pathasst.testing.http_server import server_error, too_many_requests
from pathasst.testing.images import make_image

HTML = {"Content-Type": "text/html; charset=utf-8"}
PNG = {"Content-Type": "image/png"}


def png(seed=0, size=(120, 90)):
    return 200, PNG, make_image("RGB", size, seed)


def page(body, head=""):
    return 200, HTML, f"<!doctype html><html><head><title>Atlas</title>{head}</head><body>{body}</body></html>"


def extract(inputs, **overrides):
    """Run the source's units in this process (no writer): {unit key: UnitResult}."""
    cfg = WebConfig(**{"rate_limit_per_host": 0, "backoff": 0.01, **overrides})
    return {unit.key: web.extract_unit(unit, cfg) for unit in web.iter_units([str(i) for i in inputs], cfg)}


def records_of(results):
    return [r for res in results.values() for r in res.records]


def rejects_of(results):
    return {item: reason for res in results.values() for item, reason, _ in res.rejects}


def meta(record):
    return json.loads(record["meta"] or "{}")


def url_list(tmp_path, *urls, name="urls.txt"):
    path = tmp_path / name
    path.write_text("# pages to crawl\n\n" + "\n".join(urls) + "\n")
    return path


def test_figures_are_found_and_paired_in_document_order(http_server, tmp_path):
    http_server.routes.update({
        "/robots.txt": (404, {}, ""),
        "/site/page.html": page("""
          <article>
            <figure id="fig1"><img src="img/a.png"><figcaption>Figure 1. Granuloma with Langhans giant
              cells, H&amp;E.</figcaption></figure>
            <p><a href="/site/img/b-large.png"><img src="/img/b.png"></a></p>
            <p class="caption">Fig. 2 Caseating necrosis.</p>
            <div><img src="../img/c.png"></div>
            <p>Figure 3: Acid-fast bacilli, Ziehl-Neelsen stain.</p>
            <img src="img/icon.png" width="16" height="16" alt="Print this page now please">
            <figure><img src="img/p1.png"><img src="img/p2.png"><img src="img/tiny.png" width="12">
              <figcaption>Figure 4. (A) H&amp;E. (B) CD68 immunostain.</figcaption></figure>
            <figure><svg width="10" height="10"></svg><figcaption>Figure 5. A vector diagram.</figcaption></figure>
          </article>
          <section><p>Figure 6. Sarcoid granulomas without necrosis.</p><img src="img/d.png"></section>
          <section><img src="img/e.png" alt="Low-power view of a reactive lymph node"></section>
        """),
        "/site/img/a.png": png(1),
        "/site/img/b-large.png": png(2, (240, 180)),
        "/img/b.png": png(2),
        "/img/c.png": png(3),
        "/site/img/p1.png": png(4),
        "/site/img/p2.png": png(5, (100, 90)),
        "/site/img/d.png": png(6),
        "/site/img/e.png": png(7),
    })
    url = http_server.url_for("/site/page.html")
    results = extract([url_list(tmp_path, url)])
    assert list(results) == [f"web:{url}"]
    records, rejects = records_of(results), rejects_of(results)
    got = {r["figure_id"].split("/")[1]: (r["caption"], meta(r)["caption_origin"]) for r in records}
    assert got == {
        "f0": ("Granuloma with Langhans giant cells, H&E.", "figcaption"),
        "f1": ("Caseating necrosis.", "caption_class"),
        "f2": ("Acid-fast bacilli, Ziehl-Neelsen stain.", "label_paragraph"),
        "f3": ("(A) H&E. (B) CD68 immunostain.", "figcaption"),
        "f5": ("Sarcoid granulomas without necrosis.", "preceding_label"),
        "f6": ("Low-power view of a reactive lymph node", "alt"),
    }
    assert rejects == {records[0]["figure_id"].replace("/f0", "/f4"): "no image: a captioned <figure> holds no <img> (svg)"}
    by_id = {r["figure_id"].split("/")[1]: r for r in records}
    f0 = by_id["f0"]
    assert f0["source"] == "web" and f0["source_id"] == url and f0["figure_label"] == "Figure 1"
    assert f0["figure_id"].startswith(web.hashlib.sha256(url.encode()).hexdigest()[:16] + "/")
    assert meta(f0)["element_id"] == "fig1" and meta(f0)["page_title"] == "Atlas"
    assert (by_id["f1"]["width"], by_id["f1"]["height"]) == (240, 180)  # the linked full-size image
    assert meta(by_id["f6"])["flags"] == ["alt_text_caption", "license_unknown"]
    panels = meta(by_id["f3"])["panels"]
    assert [p["url"].rsplit("/", 1)[1] for p in panels] == ["p1.png", "p2.png"] and by_id["f3"]["width"] > 200
    assert all(r["license"] == "unknown" for r in records)
    requested = {r.url_path for r in http_server.requests}
    assert "/site/img/icon.png" not in requested and "/site/img/tiny.png" not in requested
    assert "/img/b.png" not in requested  # the thumbnail is only the fallback


def test_alt_text_only_when_allowed(http_server, tmp_path):
    http_server.routes.update({
        "/robots.txt": (404, {}, ""),
        "/p.html": page('<main><img src="/x.png" alt="Colonic adenocarcinoma invading the submucosa"></main>'),
        "/x.png": png(),
    })
    url = http_server.url_for("/p.html")
    (rec,) = records_of(extract([url]))
    assert meta(rec)["caption_origin"] == "alt" and "alt_text_caption" in meta(rec)["flags"]
    results = extract([url], allow_alt_text=False)
    assert not records_of(results)
    assert list(rejects_of(results).values())[0].startswith("alt text only")


def test_local_html_relative_and_data_urls(tmp_path, http_server):
    import base64

    folder = tmp_path / "saved"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(make_image("RGB", (100, 80), 1))
    data_url = "data:image/png;base64," + base64.b64encode(make_image("RGB", (90, 90), 2)).decode()
    (folder / "page.html").write_text(f"""<html><body>
        <figure><img src="img/a.png"><figcaption>Fig. 1. Local relative image.</figcaption></figure>
        <figure><img src="{data_url}"><figcaption>Fig. 2. Inline data image.</figcaption></figure>
        <figure><img src="img/missing.png"><figcaption>Fig. 3. Lost image.</figcaption></figure>
        </body></html>""")
    results = extract([folder])
    ((key, result),) = results.items()
    sha = web.hashlib.sha256((folder / "page.html").read_bytes()).hexdigest()
    assert key == f"web:file:{sha}"
    assert [r["caption"] for r in result.records] == ["Local relative image.", "Inline data image."]
    assert result.records[0]["source_id"] == (folder / "page.html").resolve().as_uri()
    assert result.records[0]["figure_id"] == f"{sha[:16]}/f0"
    assert [reason for _, reason, _ in result.rejects] == ["missing file: missing.png (from " +
                                                           (folder / "img" / "missing.png").resolve().as_uri() + ")"]
    # a web page may not make us read local files
    http_server.routes.update({"/robots.txt": (404, {}, ""), "/evil.html": page(
        f'<figure><img src="{(folder / "img" / "a.png").resolve().as_uri()}"><figcaption>Fig. 1. x y.</figcaption></figure>')})
    (reason,) = rejects_of(extract([http_server.url_for("/evil.html")])).values()
    assert reason.startswith("refused: a web page may not point at a local file")


def test_robots_txt_is_obeyed_and_matched_on_our_agent(http_server, tmp_path):
    http_server.routes.update({
        "/robots.txt": (200, {"Content-Type": "text/plain"},
                        "User-agent: pathasst\nDisallow: /private/\nDisallow: /nopathasst/\n\n"
                        "User-agent: *\nDisallow: /\n"),
        "/ok.html": page('<figure><img src="/private/x.png"><figcaption>Fig. 1. Hidden image.</figcaption></figure>'
                         '<figure><img src="/pub/y.png"><figcaption>Fig. 2. Public image.</figcaption></figure>'),
        "/private/page.html": page("<p>secret</p>"),
        "/pub/y.png": png(1),
        "/private/x.png": png(2),
    })
    urls = [http_server.url_for(p) for p in ("/ok.html", "/private/page.html", "/nopathasst/p.html")]
    results = extract([url_list(tmp_path, *urls)])
    assert [r["caption"] for r in records_of(results)] == ["Public image."]
    rejects = rejects_of(results)
    assert rejects[f"web:{urls[1]}"] == f"robots: disallowed by robots.txt: {urls[1]}"
    assert rejects[f"web:{urls[2]}"].startswith("robots: disallowed")
    assert any(k.endswith("/f0") and v.startswith("robots: disallowed") for k, v in rejects.items())
    paths = [r.url_path for r in http_server.requests]
    assert not any(p.startswith(("/private/", "/nopathasst/")) for p in paths)
    assert paths.count("/robots.txt") == 1  # fetched once per run and host
    http_server.clear()
    extract([urls[1]], obey_robots=False)
    assert [r.url_path for r in http_server.requests] == ["/private/page.html"]


def test_robots_txt_server_error_disallows_everything(http_server):
    http_server.routes.update({"/robots.txt": server_error(503), "/p.html": page("<p>x</p>")})
    (reason,) = rejects_of(extract([http_server.url_for("/p.html")], retries=1)).values()
    assert reason.startswith("robots: disallowed")
    assert [r.url_path for r in http_server.requests] == ["/robots.txt", "/robots.txt"]


def test_redirects_are_followed_and_each_hop_checked(http_server):
    http_server.routes.update({
        "/robots.txt": (200, {}, "User-agent: *\nDisallow: /private/\n"),
        "/old.html": (301, {"Location": "/new/page.html"}, ""),
        "/new/page.html": page('<figure><img src="pic.png"><figcaption>Fig. 1. Moved page.</figcaption></figure>'),
        "/new/pic.png": (302, {"Location": "/private/pic.png"}, ""),
        "/sneaky.html": (302, {"Location": "/private/x.html"}, ""),
    })
    results = extract([http_server.url_for("/old.html"), http_server.url_for("/sneaky.html")])
    rejects = rejects_of(results)
    assert rejects[f"web:{http_server.url_for('/sneaky.html')}"].startswith("robots: disallowed")
    (reason,) = [v for k, v in rejects.items() if k.endswith("/f0")]
    assert reason.startswith("robots: disallowed")
    assert not any(r.url_path.startswith("/private/") for r in http_server.requests)
    http_server.routes["/new/pic.png"] = png()
    (rec,) = records_of(extract([http_server.url_for("/old.html")]))
    assert rec["source_id"] == http_server.url_for("/new/page.html")
    assert meta(rec)["requested_url"] == http_server.url_for("/old.html")
    assert rec["figure_id"].startswith(web.hashlib.sha256(http_server.url_for("/old.html").encode()).hexdigest()[:16])


def test_user_agent_is_sent_on_every_request(http_server):
    http_server.routes.update({
        "/robots.txt": (200, {}, "User-agent: *\nAllow: /\n"),
        "/p.html": page('<figure><img src="/a.png"><figcaption>Fig. 1. Agent check.</figcaption></figure>'),
        "/a.png": png(),
    })
    agent = "pathasst-test-crawler/9.9 (tests)"
    assert len(records_of(extract([http_server.url_for("/p.html")], user_agent=agent))) == 1
    assert [r.url_path for r in http_server.requests] == ["/robots.txt", "/p.html", "/a.png"]
    assert {r.header("User-Agent") for r in http_server.requests} == {agent}
    assert WebConfig().user_agent.startswith(f"pathasst/{web.__version__} (")


def _stamped(log, response):
    def answer(req):
        log.append((req.url_path, time.monotonic()))
        return response
    return answer


def _gaps(log):
    times = sorted(t for _, t in log)
    return [b - a for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_rate_limit_spaces_requests_to_one_host(http_server, tmp_path, num_proc):
    from pathasst.dataset_builders.extract.common import run_extract

    log = []
    http_server.routes["/robots.txt"] = _stamped(log, (404, {}, ""))
    urls = []
    for i in range(3):
        http_server.routes[f"/p{i}.html"] = _stamped(log, page(
            f'<figure><img src="/i{i}.png"><figcaption>Fig. {i}. Page {i} figure.</figcaption></figure>'))
        http_server.routes[f"/i{i}.png"] = _stamped(log, png(i))
        urls.append(http_server.url_for(f"/p{i}.html"))
    limit = 0.25
    cfg = WebConfig(rate_limit_per_host=limit, num_proc=num_proc)
    summary = run_extract(web.SOURCE, cfg, [str(url_list(tmp_path, *urls))], str(tmp_path / "out"), progress=False)
    assert summary.total_records == 3 and len(log) == 7
    # the server's own receive times: the next request leaves `limit` after the previous answer
    # arrived, so even across worker processes no two requests reach the host closer than that
    assert min(_gaps(log)) >= limit, _gaps(log)


def test_429_retry_after_then_success_and_5xx_backoff(http_server):
    log = []
    http_server.routes.update({
        "/robots.txt": (404, {}, ""),
        "/p.html": _stamped(log, page('<figure><img src="/a.png"><figcaption>Fig. 1. Retried.</figcaption></figure>')),
        "/a.png": png(),
        "/gone.png": server_error(500),
    })
    http_server.queue("/p.html", _stamped(log, too_many_requests(retry_after=1)))
    http_server.queue("/a.png", server_error(503), server_error(502))
    (rec,) = records_of(extract([http_server.url_for("/p.html")]))
    assert rec["caption"] == "Retried."
    assert [p for p, _ in log] == ["/p.html", "/p.html"] and _gaps(log)[0] >= 1.0
    assert len(http_server.requests_to("/a.png")) == 3
    http_server.routes["/q.html"] = page('<figure><img src="/gone.png"><figcaption>Fig. 2. Never.</figcaption></figure>')
    (reason,) = rejects_of(extract([http_server.url_for("/q.html")], retries=2)).values()
    assert reason.startswith("http 500: ") and reason.endswith("(gave up after 3 attempts)")
    http_server.queue("/p.html", too_many_requests(retry_after=3600))
    (reason,) = rejects_of(extract([http_server.url_for("/p.html")])).values()
    assert "exceeds max_retry_after" in reason


def test_dropped_connections_are_retried_and_timeouts_reported(http_server):
    from pathasst.testing.http_server import dropped, slow

    http_server.routes.update({
        "/robots.txt": (404, {}, ""),
        "/p.html": page('<figure><img src="/a.png"><figcaption>Fig. 1. After a reset.</figcaption></figure>'
                        '<figure><img src="/slow.png"><figcaption>Fig. 2. Too slow.</figcaption></figure>'),
        "/a.png": png(1),
        "/slow.png": slow(3, png(2)),
    })
    http_server.queue("/a.png", dropped())
    results = extract([http_server.url_for("/p.html")], timeout=0.3, retries=1)
    assert [r["caption"] for r in records_of(results)] == ["After a reset."]
    (reason,) = rejects_of(results).values()
    assert reason.startswith("network: ") and reason.endswith("(gave up after 2 attempts)")


def test_missing_broken_and_tiny_images_go_to_the_ledger(http_server):
    from pathasst.testing.images import make_truncated_image

    http_server.routes.update({
        "/robots.txt": (404, {}, ""),
        "/p.html": page(
            '<figure><img src="/none.png"><figcaption>Fig. 1. Missing.</figcaption></figure>'
            '<figure><img src="/cut.jpg"><figcaption>Fig. 2. Truncated.</figcaption></figure>'
            '<figure><img src="/small.png"><figcaption>Fig. 3. Tiny.</figcaption></figure>'
            '<figure><img src="/cmyk.jpg"><figcaption>Fig. 4. CMYK.</figcaption></figure>'),
        "/cut.jpg": (200, {}, make_truncated_image()),
        "/small.png": png(size=(20, 20)),
        "/cmyk.jpg": (200, {}, make_image("CMYK", (100, 100), fmt="JPEG")),
    })
    results = extract([http_server.url_for("/p.html")])
    reasons = sorted(rejects_of(results).values())
    assert [r.split(":")[0] for r in reasons] == ["http 404", "tiny image", "truncated image"]
    (rec,) = records_of(results)
    assert rec["caption"] == "CMYK." and (rec["width"], rec["height"]) == (100, 100)


@pytest.mark.parametrize("declared", ["meta", "header"])
def test_non_utf8_page_with_declared_charset(http_server, declared):
    body = ('<html><head>{}</head><body><figure><img src="/a.png"><figcaption>Fig. 1. Granulome épithélioïde '
            '\u2013 40 \u00b5m, coloration H&amp;E.</figcaption></figure></body></html>')
    if declared == "meta":
        data = body.format('<meta charset="iso-8859-1">').encode("cp1252")  # labels as WHATWG reads them
        headers = {"Content-Type": "text/html"}
    else:
        data = body.format("").encode("cp1252")
        headers = {"Content-Type": "text/html; charset=windows-1252"}
    http_server.routes.update({"/robots.txt": (404, {}, ""), "/p.html": (200, headers, data), "/a.png": png()})
    (rec,) = records_of(extract([http_server.url_for("/p.html")]))
    assert rec["caption"] == "Granulome épithélioïde \u2013 40 \u00b5m, coloration H&E."


def test_licences_from_figure_page_config_or_unknown(http_server):
    fig = '<figure><img src="/a.png"><figcaption>Fig. 1. Licensed figure.{}</figcaption></figure>'
    http_server.routes.update({
        "/robots.txt": (404, {}, ""), "/a.png": png(),
        "/meta.html": page(fig.format(""), '<meta name="DC.rights" content="CC BY-NC 4.0">'),
        "/link.html": page(fig.format(""), '<link rel="license" href="https://creativecommons.org/licenses/by-sa/3.0/">'),
        "/badge.html": page(fig.format(' <img src="https://licensebuttons.net/l/by/4.0/88x31.png" width="88" height="31">'),
                            '<meta name="dc.rights" content="All rights reserved">'),
        "/none.html": page(fig.format("")),
    })
    got = {}
    for name in ("meta", "link", "badge", "none"):
        (rec,) = records_of(extract([http_server.url_for(f"/{name}.html")]))
        got[name] = (rec["license"], rec["noncommercial"], meta(rec)["license_origin"])
    assert got == {
        "meta": ("CC BY-NC 4.0", True, "page"),
        "link": ("CC BY-SA 3.0", False, "page"),
        "badge": ("CC BY 4.0", False, "figure"),
        "none": ("unknown", None, "none"),
    }
    (rec,) = records_of(extract([http_server.url_for("/none.html")], license="CC0"))
    assert (rec["license"], meta(rec)["license_origin"], "flags" in meta(rec)) == ("CC0 1.0", "config", False)
    assert not any(r.url_path.endswith("88x31.png") for r in http_server.requests)


def test_cli_end_to_end_ledger_and_resume(http_server, tmp_path):
    import datasets

    from pathasst.cli import main

    http_server.routes["/robots.txt"] = (200, {}, "User-agent: *\nDisallow: /private/\n")
    for i in range(4):
        http_server.routes[f"/p{i}.html"] = page(
            f'<figure><img src="/i{i}.png"><figcaption>Fig. {i}. Page {i} lesion.</figcaption></figure>'
            f'<figure><img src="/lost{i}.png"><figcaption>Fig. {i}b. Lost.</figcaption></figure>',
            '<link rel="license" href="https://creativecommons.org/licenses/by/4.0/">')
        http_server.routes[f"/i{i}.png"] = png(i)
    http_server.routes["/empty.html"] = page("<p>No figures here.</p>")
    good = [http_server.url_for(f"/p{i}.html") for i in range(4)]
    bad = [http_server.url_for("/private/p.html"), http_server.url_for("/gone.html"), "ftp://example.org/x",
           http_server.url_for("/empty.html")]
    out = tmp_path / "caps"
    first = url_list(tmp_path, *good[:2], *bad, name="first.txt")
    assert main(["extract", "web", str(first), "rate_limit_per_host=0", "--out", str(out)]) == 0
    assert main(["extract", "web", str(url_list(tmp_path, *good, *bad, name="all.txt")), "rate_limit_per_host=0",
                 "--out", str(out)]) == 0  # the same command again resumes
    ds = datasets.load_dataset(str(out))
    rows = [r for split in ds.values() for r in split]
    assert sorted(r["caption"] for r in rows) == [f"Page {i} lesion." for i in range(4)]
    assert len({r["id"] for r in rows}) == 4 and all(r["license"] == "CC BY 4.0" for r in rows)
    ledger = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {item["id"]: item["reason"] for item in ledger}
    assert len(ledger) == len(reasons) == 4 + len(bad)  # one lost image per page, one line per bad page
    assert reasons[f"web:{bad[0]}"].startswith("robots:")
    assert reasons[f"web:{bad[1]}"].startswith("http 404")
    assert reasons["web:invalid:ftp://example.org/x"].startswith("invalid input: not an http(s) URL")
    assert reasons[f"web:{bad[3]}"].startswith("no figures")
    # inputs = records + rejects: 4 pages x 2 figures + 4 bad pages
    assert len(rows) + len(ledger) == 4 * 2 + len(bad)
    # the resumed run fetched only the pages the first did not finish
    assert len(http_server.requests_to("/p0.html")) == 1 and len(http_server.requests_to("/p3.html")) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"] == len(ledger)
