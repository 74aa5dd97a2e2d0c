/* kb_doc: format guessing, the input checks and their messages, titles, content hashes,
 * heading paths and block text for Markdown (libcmark), HTML (libxml2) and plain text,
 * on small inline documents and on the support-desk fixtures in tests/fixtures/kb. */
#include "kb_doc.h"
#include "utf8.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static void parse_ok(const char *src, size_t len, enum kb_format fmt, const char *source,
                     struct kb_doc *d)
{
    char *err = NULL;
    int rc = kb_doc_parse(src, len, fmt, source, d, &err);
    cr_assert_eq(rc, 0, "parse of %s failed: %s", source, err ? err : "(no message)");
    cr_assert_null(err);
}

static void md(const char *src, struct kb_doc *d)
{
    parse_ok(src, strlen(src), KB_FORMAT_MARKDOWN, "docs/page.md", d);
}

static void html(const char *src, struct kb_doc *d)
{
    parse_ok(src, strlen(src), KB_FORMAT_HTML, "https://help.example.com/page.html", d);
}

/* The error message for bytes that must be rejected. */
static char *parse_err(const char *src, size_t len, enum kb_format fmt)
{
    struct kb_doc d;
    char *err = NULL;
    int rc = kb_doc_parse(src, len, fmt, "x.md", &d, &err);
    cr_assert_eq(rc, -1, "expected an error");
    cr_assert_not_null(err);
    cr_assert_eq(d.nsections, 0, "doc left empty on failure");
    cr_assert_null(d.title);
    kb_doc_free(&d);
    return err;
}

static void assert_err(const char *src, size_t len, enum kb_format fmt, const char *want)
{
    char *err = parse_err(src, len, fmt);
    cr_assert_str_eq(err, want);
    free(err);
}

static char *path_of(const struct kb_doc *d, size_t i)
{
    cr_assert_lt(i, d->nsections);
    return kb_section_path_join(&d->sections[i]);
}

static void assert_path(const struct kb_doc *d, size_t i, const char *want)
{
    char *p = path_of(d, i);
    cr_assert_str_eq(p, want, "section %zu", i);
    free(p);
}

/* The only block of section i. */
static const struct kb_block *only_block(const struct kb_doc *d, size_t i)
{
    cr_assert_lt(i, d->nsections);
    cr_assert_eq(d->sections[i].nblocks, 1, "section %zu has %zu blocks", i,
                 d->sections[i].nblocks);
    return &d->sections[i].blocks[0];
}

/* All block text of d, blocks separated by "\n--\n" (to look for dropped content). */
static char *all_text(const struct kb_doc *d)
{
    size_t cap = 1;
    for (size_t i = 0; i < d->nsections; i++)
        for (size_t k = 0; k < d->sections[i].nblocks; k++)
            cap += strlen(d->sections[i].blocks[k].text) + 4;
    char *s = calloc(1, cap);
    for (size_t i = 0; i < d->nsections; i++)
        for (size_t k = 0; k < d->sections[i].nblocks; k++) {
            strcat(s, d->sections[i].blocks[k].text);
            strcat(s, "\n--\n");
        }
    return s;
}

static char *read_fixture(const char *rel, size_t *len)
{
    const char *root = getenv("TIERONE_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/fixtures/kb/%s", root ? root : ".", rel);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s (TIERONE_SOURCE_DIR set?)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void fixture(const char *rel, struct kb_doc *d)
{
    size_t len;
    char *buf = read_fixture(rel, &len);
    enum kb_format fmt = kb_format_guess(rel, NULL);
    cr_assert_neq(fmt, KB_FORMAT_UNKNOWN, "%s", rel);
    parse_ok(buf, len, fmt, rel, d);
    free(buf);
}

/* Index of the section with this joined path, or -1. */
static long find_section(const struct kb_doc *d, const char *want)
{
    for (size_t i = 0; i < d->nsections; i++) {
        char *p = kb_section_path_join(&d->sections[i]);
        int eq = strcmp(p, want) == 0;
        free(p);
        if (eq)
            return (long)i;
    }
    return -1;
}

/* ---- formats ---- */

Test(kb_format, guess_by_extension_then_content_type)
{
    cr_assert_eq(kb_format_guess("docs/deploy.md", NULL), KB_FORMAT_MARKDOWN);
    cr_assert_eq(kb_format_guess("README.MARKDOWN", NULL), KB_FORMAT_MARKDOWN);
    cr_assert_eq(kb_format_guess("faq.HTM", NULL), KB_FORMAT_HTML);
    cr_assert_eq(kb_format_guess("/srv/help/index.html", "text/plain"), KB_FORMAT_HTML);
    cr_assert_eq(kb_format_guess("notes.txt", NULL), KB_FORMAT_TEXT);
    cr_assert_eq(kb_format_guess("https://raw.example.com/docs/api.md?ref=main#limits", NULL),
                 KB_FORMAT_MARKDOWN, "query and fragment ignored");
    cr_assert_eq(
        kb_format_guess("https://help.example.com/articles/42", "text/html; charset=utf-8"),
        KB_FORMAT_HTML);
    cr_assert_eq(kb_format_guess("https://help.example.com/index.php", "TEXT/HTML"), KB_FORMAT_HTML,
                 "unknown extension falls back to the content type");
    cr_assert_eq(kb_format_guess("https://x.example.com/changes", "text/plain"), KB_FORMAT_TEXT);
    cr_assert_eq(kb_format_guess(NULL, "text/markdown"), KB_FORMAT_MARKDOWN);
    cr_assert_eq(kb_format_guess("https://x.example.com/a.b/file", NULL), KB_FORMAT_UNKNOWN,
                 "a dot in a directory is no extension");
    cr_assert_eq(kb_format_guess("manual.pdf", NULL), KB_FORMAT_UNKNOWN);
    cr_assert_eq(kb_format_guess("logo.png", "image/png"), KB_FORMAT_UNKNOWN);
    cr_assert_eq(kb_format_guess(".md", NULL), KB_FORMAT_UNKNOWN, "a dot file has no extension");
    cr_assert_eq(kb_format_guess(NULL, NULL), KB_FORMAT_UNKNOWN);
    cr_assert_str_eq(kb_format_name(KB_FORMAT_HTML), "html");
    cr_assert_str_eq(kb_format_name(KB_FORMAT_UNKNOWN), "unknown");
}

/* ---- checks ---- */

Test(kb_doc_errors, unsupported_type)
{
    assert_err("%PDF-1.7", 8, KB_FORMAT_UNKNOWN, "unsupported document type");
}

Test(kb_doc_errors, empty_and_whitespace_only)
{
    assert_err("", 0, KB_FORMAT_MARKDOWN, "empty document");
    assert_err(" \n\t\r\n  \n", 8, KB_FORMAT_TEXT, "empty document");
    assert_err("\n\n", 2, KB_FORMAT_HTML, "empty document");
}

Test(kb_doc_errors, no_text_after_parsing)
{
    const char *only_rule = "---\n\n***\n";
    assert_err(only_rule, strlen(only_rule), KB_FORMAT_MARKDOWN, "empty document");
    const char *only_script = "<html><head><title>x</title><script>var a = 1;</script></head>"
                              "<body><script>track()</script><nav>Home</nav></body></html>";
    assert_err(only_script, strlen(only_script), KB_FORMAT_HTML, "empty document");
}

Test(kb_doc_errors, binary)
{
    static const char png[] = "\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    assert_err(png, sizeof(png) - 1, KB_FORMAT_MARKDOWN, "binary file");
    static const char nul_late[] = "# Title\n\nSome text and then a NUL \0 in the middle.\n";
    assert_err(nul_late, sizeof(nul_late) - 1, KB_FORMAT_MARKDOWN, "binary file");
    char ctl[200];
    for (size_t i = 0; i < sizeof(ctl); i++)
        ctl[i] = (char)(i % 3 ? 'a' : 0x01);
    assert_err(ctl, sizeof(ctl), KB_FORMAT_TEXT, "binary file");
}

Test(kb_doc_errors, invalid_utf8_with_offset)
{
    /* Latin-1 "é" (0xE9) where UTF-8 was expected: byte 16. */
    static const char latin1[] = "# Caf\xc3\xa9\n\nMenu du caf\xe9 et prix\n";
    char *err = parse_err(latin1, sizeof(latin1) - 1, KB_FORMAT_MARKDOWN);
    cr_assert_str_eq(err, "invalid UTF-8 at byte 20");
    free(err);
    assert_err("ab\xc0\xaf", 4, KB_FORMAT_TEXT, "invalid UTF-8 at byte 2");       /* overlong "/" */
    assert_err("x\xed\xa0\x80y", 5, KB_FORMAT_TEXT, "invalid UTF-8 at byte 1");   /* surrogate */
    assert_err("abc\xe2\x82", 5, KB_FORMAT_TEXT, "invalid UTF-8 at byte 3");      /* truncated */
    assert_err("\xf4\x90\x80\x80", 4, KB_FORMAT_TEXT, "invalid UTF-8 at byte 0"); /* > U+10FFFF */
    assert_err("ok \x80", 4, KB_FORMAT_TEXT, "invalid UTF-8 at byte 3"); /* lone continuation */
}

Test(kb_doc, utf8_helpers)
{
    size_t at = 99;
    cr_assert_eq(utf8_check("żółw 🐢 ok", strlen("żółw 🐢 ok"), &at), 0);
    cr_assert_eq(at, 99, "untouched on success");
    cr_assert_eq(utf8_count("żółw 🐢", strlen("żółw 🐢")), 6);
}

/* ---- hash, source ---- */

Test(kb_doc, hash_and_source)
{
    struct kb_doc d;
    parse_ok("hello\n", 6, KB_FORMAT_TEXT, "/kb/hello.txt", &d);
    cr_assert_str_eq(d.hash, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
    cr_assert_str_eq(d.source, "/kb/hello.txt");
    cr_assert_eq(d.format, KB_FORMAT_TEXT);
    kb_doc_free(&d);
    kb_doc_free(&d); /* zeroed: a second free is harmless */
}

/* ---- Markdown ---- */

Test(kb_md, title_is_first_h1)
{
    struct kb_doc d;
    md("Intro before any heading.\n\n## Setup\n\nText.\n\n# Billing\n\nMore.\n\n# Other\n", &d);
    cr_assert_str_eq(d.title, "Billing");
    kb_doc_free(&d);
}

Test(kb_md, title_falls_back_to_first_heading_then_file_name)
{
    struct kb_doc d;
    md("Some text.\n\n### Scaling workers\n\nMore.\n\n## Later\n\nx\n", &d);
    cr_assert_str_eq(d.title, "Scaling workers");
    kb_doc_free(&d);
    const char *plain = "No headings here, just a note about exports.\n";
    parse_ok(plain, strlen(plain), KB_FORMAT_MARKDOWN, "kb/getting-started.v2.md", &d);
    cr_assert_str_eq(d.title, "getting-started.v2");
    kb_doc_free(&d);
    parse_ok(plain, strlen(plain), KB_FORMAT_MARKDOWN,
             "https://raw.example.com/org/docs/guide.md?plain=1", &d);
    cr_assert_str_eq(d.title, "guide");
    kb_doc_free(&d);
}

Test(kb_md, setext_heading_and_inline_markup_in_title)
{
    struct kb_doc d;
    md("Using the *Orbit* `CLI`\n=======================\n\nText.\n", &d);
    cr_assert_str_eq(d.title, "Using the Orbit CLI");
    assert_path(&d, 0, "Using the Orbit CLI");
    kb_doc_free(&d);
}

Test(kb_md, front_matter_skipped_and_its_title_used)
{
    struct kb_doc d;
    md("---\ntitle: \"API rate limits\"\nupdated: 2024-05-02\n---\n\n# Rate limits\n\nBody.\n", &d);
    cr_assert_str_eq(d.title, "API rate limits");
    cr_assert_eq(d.nsections, 1);
    assert_path(&d, 0, "Rate limits");
    cr_assert_str_eq(only_block(&d, 0)->text, "Body.");
    kb_doc_free(&d);
}

Test(kb_md, heading_paths_nested_and_skipped_levels)
{
    struct kb_doc d;
    md("Preamble text.\n\n"
       "# Deploy\n\nDeploy intro.\n\n"
       "## Helm\n\nHelm intro.\n\n"
       "### Scaling\n\nScale the workers.\n\n"
       "### Upgrading\n\nRun helm upgrade.\n\n"
       "## Docker\n\nRun the image.\n\n"
       "#### Ports\n\nExpose 8080.\n\n"
       "## Empty section\n\n"
       "## Helm\n\nA second Helm section.\n\n"
       "# Billing\n\n### Refunds\n\nWithin 14 days.\n",
       &d);
    static const char *const want[][2] = {
        {"", "Preamble text."},
        {"Deploy", "Deploy intro."},
        {"Deploy > Helm", "Helm intro."},
        {"Deploy > Helm > Scaling", "Scale the workers."},
        {"Deploy > Helm > Upgrading", "Run helm upgrade."},
        {"Deploy > Docker", "Run the image."},
        {"Deploy > Docker > Ports", "Expose 8080."},
        {"Deploy > Helm", "A second Helm section."},
        {"Billing > Refunds", "Within 14 days."},
    };
    cr_assert_eq(d.nsections, sizeof(want) / sizeof(want[0]), "sections: %zu", d.nsections);
    for (size_t i = 0; i < d.nsections; i++) {
        assert_path(&d, i, want[i][0]);
        cr_assert_str_eq(only_block(&d, i)->text, want[i][1]);
    }
    cr_assert_eq(d.sections[0].depth, 0);
    cr_assert_null(d.sections[0].path);
    cr_assert_eq(d.sections[6].depth, 3, "## then #### nests without a gap");
    cr_assert_eq(d.sections[8].depth, 2, "# then ### nests without a gap");
    kb_doc_free(&d);
}

Test(kb_md, inline_markup_flattened)
{
    struct kb_doc d;
    md("# Exports\n\n"
       "See the [billing page](https://example.com/billing \"Billing\") and run\n"
       "`orbit export --all`, **now** or _later_. ![Export dialog](dialog.png)\n"
       "Press <kbd>Ctrl</kbd>+<kbd>E</kbd> &amp; wait\\\n"
       "for the email. Visit <https://status.example.com>.\n",
       &d);
    cr_assert_str_eq(
        only_block(&d, 0)->text,
        "See the billing page and run orbit export --all, now or later. Export "
        "dialog Press Ctrl+E & wait\nfor the email. Visit https://status.example.com.");
    cr_assert_eq(only_block(&d, 0)->kind, KB_BLOCK_PARAGRAPH);
    kb_doc_free(&d);
}

Test(kb_md, code_blocks_keep_exact_content)
{
    struct kb_doc d;
    const char *code = "worker:\n  replicas: 3\n\n  # HPA settings\n  autoscaling:\n"
                       "    enabled: true   \n    maxReplicas: 12";
    char src[512];
    snprintf(src, sizeof(src),
             "# Scaling\n\nSet the values:\n\n```yaml\n%s\n```\n\nOr indented:\n\n"
             "    kubectl scale deploy/orbit-worker --replicas=5\n      # note\n",
             code);
    md(src, &d);
    cr_assert_eq(d.sections[0].nblocks, 4);
    const struct kb_block *b = &d.sections[0].blocks[1];
    cr_assert_eq(b->kind, KB_BLOCK_CODE);
    cr_assert_str_eq(b->text, code, "fenced code kept byte for byte");
    cr_assert_str_eq(b->info, "yaml");
    b = &d.sections[0].blocks[3];
    cr_assert_eq(b->kind, KB_BLOCK_CODE);
    cr_assert_str_eq(b->text, "kubectl scale deploy/orbit-worker --replicas=5\n  # note");
    cr_assert_null(b->info);
    kb_doc_free(&d);
}

Test(kb_md, pipe_table_becomes_table_block)
{
    struct kb_doc d;
    md("# Plans\n\n"
       "| Plan | Price | Seats |\n"
       "|------|------:|:-----:|\n"
       "| **Team** | $49 | 10 |\n"
       "| Business | $249 | `unlimited` |\n\n"
       "Use a | b when piping.\n\n"
       "Header | only\n",
       &d);
    cr_assert_eq(d.sections[0].nblocks, 3);
    const struct kb_block *t = &d.sections[0].blocks[0];
    cr_assert_eq(t->kind, KB_BLOCK_TABLE);
    cr_assert_str_eq(t->text, "Plan | Price | Seats\nTeam | $49 | 10\nBusiness | $249 | unlimited");
    cr_assert_eq(d.sections[0].blocks[1].kind, KB_BLOCK_PARAGRAPH, "a pipe is not a table");
    cr_assert_str_eq(d.sections[0].blocks[1].text, "Use a | b when piping.");
    cr_assert_eq(d.sections[0].blocks[2].kind, KB_BLOCK_PARAGRAPH, "no delimiter row");
    kb_doc_free(&d);
}

Test(kb_md, lists_one_line_per_item)
{
    struct kb_doc d;
    md("# Steps\n\n"
       "3. Open **Settings**.\n"
       "4. Click *Export*\n   and wait.\n\n"
       "   The email arrives within minutes.\n"
       "5. Download:\n"
       "   - CSV\n"
       "   - NDJSON\n"
       "     - gzip variant\n\n"
       "- a\n- b\n",
       &d);
    cr_assert_eq(d.sections[0].nblocks, 2);
    const struct kb_block *l = &d.sections[0].blocks[0];
    cr_assert_eq(l->kind, KB_BLOCK_LIST);
    cr_assert_str_eq(l->text, "3. Open Settings.\n"
                              "4. Click Export and wait.\n"
                              "  The email arrives within minutes.\n"
                              "5. Download:\n"
                              "  - CSV\n"
                              "  - NDJSON\n"
                              "    - gzip variant");
    cr_assert_str_eq(d.sections[0].blocks[1].text, "- a\n- b");
    kb_doc_free(&d);
}

Test(kb_md, quote_and_html_block)
{
    struct kb_doc d;
    md("# Notes\n\n"
       "> Orbit does not support **MySQL**.\n>\n> Use PostgreSQL 13+.\n\n"
       "<div class=\"warning\">\n<p>Back up <b>first</b> &mdash; always.</p>\n"
       "<script>alert(1)</script>\n</div>\n\n"
       "<!-- editor's note: remove before publishing -->\n",
       &d);
    cr_assert_eq(d.sections[0].nblocks, 2);
    cr_assert_eq(d.sections[0].blocks[0].kind, KB_BLOCK_QUOTE);
    cr_assert_str_eq(d.sections[0].blocks[0].text,
                     "Orbit does not support MySQL.\n\nUse PostgreSQL 13+.");
    cr_assert_eq(d.sections[0].blocks[1].kind, KB_BLOCK_PARAGRAPH);
    cr_assert_str_eq(d.sections[0].blocks[1].text, "Back up first — always.");
    kb_doc_free(&d);
}

Test(kb_md, bom_and_crlf)
{
    struct kb_doc d;
    md("\xEF\xBB\xBF# Billing\r\n\r\nInvoices are\r\nmonthly.\r\n", &d);
    cr_assert_str_eq(d.title, "Billing");
    cr_assert_str_eq(only_block(&d, 0)->text, "Invoices are monthly.");
    kb_doc_free(&d);
}

/* ---- HTML ---- */

Test(kb_html, faq_fixture)
{
    struct kb_doc d;
    fixture("faq.html", &d);
    cr_assert_str_eq(d.title, "Orbit Help Center — Frequently asked questions");
    char *all = all_text(&d);
    static const char *const dropped[] = {
        "tracking",         "font-family",          "Search the help center", "Home",
        "Related articles", "2024 Orbit Analytics", "Japanese launch",        "help.js"};
    for (size_t i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
        cr_assert_null(strstr(all, dropped[i]), "'%s' should be dropped:\n%s", dropped[i], all);
    free(all);

    assert_path(&d, 0, "Frequently asked questions");
    cr_assert_str_eq(only_block(&d, 0)->text, "Updated May 2024",
                     "a header inside article is content");
    long i = find_section(&d, "Frequently asked questions > Can I change my billing email?");
    cr_assert_geq(i, 0);
    cr_assert_str_eq(only_block(&d, (size_t)i)->text,
                     "Yes. Go to Settings → Billing and edit Billing email. Invoices and failed "
                     "payment notices go to that address from the next invoice on. It does not "
                     "change the email you sign in with.",
                     "entities decoded, whitespace and nbsp collapsed");

    i = find_section(&d, "Frequently asked questions > Why do I get “429 Too Many Requests”?");
    cr_assert_geq(i, 0);
    const struct kb_section *s = &d.sections[i];
    cr_assert_eq(s->nblocks, 4);
    cr_assert_eq(s->blocks[1].kind, KB_BLOCK_CODE);
    cr_assert_str_eq(s->blocks[1].info, "js");
    cr_assert_str_eq(s->blocks[1].text,
                     "const res = await fetch(url, { headers });\n"
                     "if (res.status === 429) {\n"
                     "  const wait = Number(res.headers.get(\"Retry-After\") ?? 1);\n"
                     "  await new Promise((r) => setTimeout(r, wait * 1000));\n"
                     "}");
    cr_assert_eq(s->blocks[3].kind, KB_BLOCK_TABLE);
    cr_assert_str_eq(s->blocks[3].text, "Requests per minute\nPlan | Limit\nFree | 60\nTeam | "
                                        "600\nBusiness | 3\u202f000");

    i = find_section(&d,
                     "Frequently asked questions > Which languages does the dashboard support?");
    cr_assert_geq(i, 0);
    cr_assert_eq(only_block(&d, (size_t)i)->kind, KB_BLOCK_LIST);
    cr_assert_str_eq(only_block(&d, (size_t)i)->text,
                     "- English\n- Deutsch & Français\n  - including Swiss variants\n- Español");
    cr_assert_geq(find_section(&d, "Frequently asked questions > Which languages does the "
                                   "dashboard support? > Can I translate reports?"),
                  0);
    kb_doc_free(&d);
}

Test(kb_html, title_falls_back_to_h1_then_file_name)
{
    struct kb_doc d;
    html("<body><p>Intro</p><h2>First</h2><p>a</p><h1>Password reset</h1><p>b</p></body>", &d);
    cr_assert_str_eq(d.title, "Password reset");
    assert_path(&d, 0, "");
    assert_path(&d, 1, "First");
    assert_path(&d, 2, "Password reset"); /* an h1 closes the h2 */
    kb_doc_free(&d);
    html("<p>Just a paragraph.</p>", &d);
    cr_assert_str_eq(d.title, "page");
    kb_doc_free(&d);
}

Test(kb_html, paragraphs_break_at_blocks_and_collapse)
{
    struct kb_doc d;
    html("<html><body><div>Loose   text\n in a div<p>A <em>real</em>\n\tparagraph.</p>tail "
         "text<br>after a break</div><dl><dt>Seat</dt><dd>A member who can sign in.</dd></dl>"
         "<blockquote><p>Quoted</p><p>twice</p></blockquote></body></html>",
         &d);
    const struct kb_section *s = &d.sections[0];
    cr_assert_eq(s->nblocks, 6);
    cr_assert_str_eq(s->blocks[0].text, "Loose text in a div");
    cr_assert_str_eq(s->blocks[1].text, "A real paragraph.");
    cr_assert_str_eq(s->blocks[2].text, "tail text after a break");
    cr_assert_str_eq(s->blocks[3].text, "Seat");
    cr_assert_str_eq(s->blocks[4].text, "A member who can sign in.");
    cr_assert_eq(s->blocks[5].kind, KB_BLOCK_QUOTE);
    cr_assert_str_eq(s->blocks[5].text, "Quoted twice");
    kb_doc_free(&d);
}

Test(kb_html, header_footer_outside_content_dropped_and_broken_markup_recovered)
{
    struct kb_doc d;
    html("<header><h1>Site banner</h1></header><section><header><h2>Refunds</h2></header>"
         "<p>Yearly plans within 14 days<footer>Last edited by Ana</footer></section>"
         "<footer>Contact us</footer><p>Unclosed <b>bold <i>italic",
         &d);
    cr_assert_str_eq(d.title, "page", "the banner's h1 is dropped with the page header");
    assert_path(&d, 0, "Refunds");
    cr_assert_eq(d.sections[0].nblocks, 3);
    cr_assert_str_eq(d.sections[0].blocks[0].text, "Yearly plans within 14 days");
    cr_assert_str_eq(d.sections[0].blocks[1].text, "Last edited by Ana");
    cr_assert_str_eq(d.sections[0].blocks[2].text, "Unclosed bold italic");
    kb_doc_free(&d);
}

Test(kb_html, charset_meta_does_not_override_utf8)
{
    struct kb_doc d;
    html("<html><head><meta charset=\"iso-8859-1\"><title>Café</title></head>"
         "<body><p>Crème brûlée</p></body></html>",
         &d);
    cr_assert_str_eq(d.title, "Café");
    cr_assert_str_eq(only_block(&d, 0)->text, "Crème brûlée");
    kb_doc_free(&d);
}

/* ---- plain text ---- */

Test(kb_text, title_and_paragraphs)
{
    struct kb_doc d;
    const char *t = "\n  Orbit release notes  \r\n\r\nOrbit 4.2 (April 2024)\r\n\r\n"
                    "Scheduled exports reach SFTP.   \nThe chart gained autoscaling.\n\n\n\nEnd.";
    parse_ok(t, strlen(t), KB_FORMAT_TEXT, "notes/release.txt", &d);
    cr_assert_str_eq(d.title, "Orbit release notes");
    cr_assert_eq(d.nsections, 1);
    assert_path(&d, 0, "");
    const struct kb_section *s = &d.sections[0];
    cr_assert_eq(s->nblocks, 4);
    cr_assert_str_eq(s->blocks[0].text, "Orbit release notes");
    cr_assert_str_eq(s->blocks[2].text,
                     "Scheduled exports reach SFTP.\nThe chart gained autoscaling.");
    cr_assert_str_eq(s->blocks[3].text, "End.");
    kb_doc_free(&d);
}

Test(kb_text, long_first_line_is_no_title)
{
    char t[1024];
    memset(t, 0, sizeof(t));
    for (int i = 0; i < 30; i++)
        strcat(t, "words in a long first line ");
    struct kb_doc d;
    parse_ok(t, strlen(t), KB_FORMAT_TEXT, "/tmp/kb/support-macros.txt", &d);
    cr_assert_str_eq(d.title, "support-macros");
    kb_doc_free(&d);
}

/* ---- the fixture tree ---- */

Test(kb_fixtures, titles_and_paths)
{
    static const struct {
        const char *file, *title, *path;
    } cases[] = {
        {"docs/deploy.md", "Deploy", "Deploy > Helm > Scaling"},
        {"docs/billing.md", "Billing", "Billing > Changing your plan > Downgrading"},
        {"docs/account/password-reset.md", "Resetting your password",
         "Resetting your password > Two-factor authentication > Recovery codes"},
        {"docs/data/export.md", "Exporting your data", "Exporting your data > Export via the API"},
        {"docs/api/rate-limits.md", "API rate limits", "Rate limits > Handling 429 responses"},
        {"faq.html", "Orbit Help Center — Frequently asked questions",
         "Frequently asked questions > How do I delete my account?"},
        {"release-notes.txt", "Orbit release notes", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct kb_doc d;
        fixture(cases[i].file, &d);
        cr_assert_str_eq(d.title, cases[i].title, "%s", cases[i].file);
        cr_assert_geq(find_section(&d, cases[i].path), 0, "%s: no section '%s'", cases[i].file,
                      cases[i].path);
        cr_assert_eq(strlen(d.hash), 64);
        for (size_t s = 0; s < d.nsections; s++)
            for (size_t k = 0; k < d.sections[s].nblocks; k++) {
                const char *text = d.sections[s].blocks[k].text;
                cr_assert_gt(strlen(text), 0);
                cr_assert_eq(utf8_check(text, strlen(text), NULL), 0);
            }
        kb_doc_free(&d);
    }
}

Test(kb_fixtures, deploy_blocks)
{
    struct kb_doc d;
    fixture("docs/deploy.md", &d);
    long i = find_section(&d, "Deploy > Docker > Environment variables");
    cr_assert_geq(i, 0);
    const struct kb_block *t = &d.sections[i].blocks[0];
    cr_assert_eq(t->kind, KB_BLOCK_TABLE);
    cr_assert(strstr(t->text, "\nORBIT_WORKERS | no | 4 | Worker threads per worker process\n"),
              "%s", t->text);
    i = find_section(&d, "Deploy > Helm > Scaling");
    const struct kb_block *code = &d.sections[i].blocks[1];
    cr_assert_eq(code->kind, KB_BLOCK_CODE);
    cr_assert_str_eq(code->info, "yaml");
    cr_assert(strncmp(code->text, "worker:\n  replicas: 3\n", 22) == 0);
    i = find_section(&d, "Deploy > Requirements");
    cr_assert_eq(d.sections[i].blocks[0].kind, KB_BLOCK_LIST);
    cr_assert_eq(d.sections[i].blocks[1].kind, KB_BLOCK_QUOTE);
    kb_doc_free(&d);
}

Test(kb_md, deep_nesting_is_flattened_not_recursed)
{
    size_t n = 20000;
    char *src = malloc(n * 2 + 64), *p = src;
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "> ");
    sprintf(p, "deep *text*\n");
    struct kb_doc d;
    md(src, &d);
    cr_assert_eq(only_block(&d, 0)->kind, KB_BLOCK_QUOTE);
    cr_assert_str_eq(only_block(&d, 0)->text, "deep text");
    kb_doc_free(&d);
    free(src);

    n = 3000; /* a list nested 3000 deep: the first levels keep their shape */
    src = malloc(n * (2 * n + 32)), p = src;
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%*s- item %zu\n", (int)(2 * i), "", i);
    md(src, &d);
    const char *t = only_block(&d, 0)->text;
    cr_assert(strncmp(t, "- item 0\n  - item 1\n    - item 2\n", 33) == 0, "%.60s", t);
    cr_assert(strstr(t, "item 2999"));
    kb_doc_free(&d);
    free(src);
}
