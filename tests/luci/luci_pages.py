"""Drives LuCI's real pages in headless Chromium (Debian's chromium + chromium-driver, Selenium):
the login page, Services > VPN Passthrough, its fields, Save, Save & Apply, the flow table.

Shared by the host test (tests/luci/test_luci_browser.py, against luci_harness.LuciRouter) and
the QEMU test (against the guest's uhttpd): everything takes a WebDriver and the router's base URL
("http://192.168.x.y/"); nothing here knows how the router runs.

    with browser(tmpdir) as drv:
        login(drv, url, "root", password)
        open_page(drv, url)                       # through the menu: Services > VPN Passthrough
        set_value(drv, "queue_num", "abc", tab="advanced"); field_error(drv, "queue_num")
        toggle(drv, "l2tp_passthrough", False); save_apply(drv)
        read_flow_table(drv); screenshot(drv, "after", tmpdir)
"""
import contextlib
import os
import shutil
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import (JavascriptException, NoSuchElementException, StaleElementReferenceException,
                                        TimeoutException, WebDriverException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
                 "--window-size=1280,1600"]
MENU_PATH = ("admin/services", "admin/services/passthrough")  # (dropdown, entry)
CONFIG = "passthrough"
SECTION = "global"


class PageError(AssertionError):
    pass


@contextlib.contextmanager
def browser(workdir, timeout=30):
    """A headless Chromium with a fresh profile under workdir; quit (and the profile gone) after."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise PageError("not installed: %s (Debian packages chromium, chromium-driver; scripts/setup.sh)"
                        % ", ".join(missing))
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in CHROMIUM_ARGS + ["--user-data-dir=" + profile]:
        opts.add_argument(a)
    log = os.path.join(workdir, "chromedriver.log")
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=log), options=opts)
    drv.set_page_load_timeout(timeout)
    try:
        yield drv
    finally:
        try:
            drv.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def _wait(drv, cond, timeout, what):
    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.1,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                                 JavascriptException)).until(lambda d: cond(d))
    except TimeoutException:
        raise PageError("timed out after %s s waiting for %s (at %s)" % (timeout, what, drv.current_url))


def _js(drv, script, *args):
    return drv.execute_script(script, *args)


def view_ready(drv):
    """LuCI's view is rendered: #view holds content and no 'Loading view' spinner."""
    return _js(drv, """
        var v = document.getElementById('view');
        return !!(v && v.children.length && !v.querySelector(':scope > .spinning'));""")


def login(drv, base_url, user, password, timeout=30):
    """Log in through LuCI's login page (bootstrap theme's sysauth view)."""
    drv.get(base_url.rstrip("/") + "/cgi-bin/luci/")
    _wait(drv, lambda d: d.find_element(By.NAME, "luci_password").is_displayed(), timeout, "the login form")
    name = drv.find_element(By.NAME, "luci_username")
    name.clear()
    name.send_keys(user)
    pw = drv.find_element(By.NAME, "luci_password")
    pw.clear()
    pw.send_keys(password)
    pw.send_keys(Keys.ENTER)

    def done(d):
        if d.find_elements(By.CSS_SELECTOR, "a[href$='/admin/logout']"):
            return "ok"
        # the login form's own refusal is an .alert-message.error; the header's warnings ("No
        # password set!", "running in recovery (initramfs) mode") are no refusal
        err = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".alert-message.error")
               if e.is_displayed() and e.text.strip()]
        return "error: " + " ".join(err) if err else None

    res = _wait(drv, done, timeout, "the page after login")
    if res != "ok":
        raise PageError("login as %s refused: %s" % (user, res))


def menu_link(drv, path="admin/services/passthrough"):
    """The href of a menu entry (LuCI's menu, rendered by the theme from admin/menu)."""
    links = drv.find_elements(By.CSS_SELECTOR, "a[href$='/%s']" % path)
    return links[0].get_attribute("href") if links else None


def open_page(drv, base_url, timeout=30):
    """Services > VPN Passthrough, through the theme's menu (the entry must sit in the Services
    dropdown); returns the page's URL when the view has rendered."""
    href = _wait(drv, lambda d: menu_link(d, MENU_PATH[1]), timeout, "Services > VPN Passthrough in the menu")
    parent = _js(drv, """
        var a = document.querySelector("a[href$='/" + arguments[0] + "']");
        var li = a && a.closest('ul') && a.closest('ul').closest('li');
        var top = li && li.querySelector(':scope > a');
        return top ? top.textContent.trim() : null;""", MENU_PATH[1])
    if parent != "Services":
        raise PageError("VPN Passthrough is not in the Services menu (it is under %r)" % parent)
    drv.get(href)
    _wait(drv, lambda d: view_ready(d) and d.find_elements(By.ID, "passthrough_flows"), timeout,
          "the VPN Passthrough view")
    return href


def option_node(drv, option):
    return drv.find_element(By.ID, "cbi-%s-%s-%s" % (CONFIG, SECTION, option))


def select_tab(drv, tab):
    for a in drv.find_elements(By.CSS_SELECTOR, "ul.cbi-tabmenu li[data-tab='%s'] a" % tab):
        if a.is_displayed():
            a.click()
            return True
    return False


def set_value(drv, option, text, tab=None):
    """Type into a Value field (on its tab) and leave it, so LuCI validates it."""
    if tab:
        select_tab(drv, tab)
    node = option_node(drv, option)
    field = node.find_element(By.CSS_SELECTOR, "input:not([type=hidden]):not([type=checkbox])")
    _wait(drv, lambda d: field.is_displayed(), 10, "field %s" % option)
    field.clear()
    field.send_keys(text)
    field.send_keys(Keys.TAB)
    return field


def field_error(drv, option):
    """LuCI's validation error of a field ('' when valid): the input's cbi-input-invalid class
    and the data-tooltip LuCI shows next to it."""
    return _js(drv, """
        var n = document.getElementById(arguments[0]);
        var i = n && n.querySelector('.cbi-input-invalid');
        return i ? (i.getAttribute('data-tooltip') || 'invalid') : '';""",
               "cbi-%s-%s-%s" % (CONFIG, SECTION, option))


def flag_state(drv, option):
    return _js(drv, "var n = document.getElementById(arguments[0]); var c = n && n.querySelector("
               "'input[type=checkbox]'); return c ? c.checked : null;", "cbi-%s-%s-%s" % (CONFIG, SECTION, option))


def toggle(drv, option, on, tab="general"):
    """Set a Flag (checkbox) to on/off; returns whether it changed."""
    if tab:
        select_tab(drv, tab)
    state = flag_state(drv, option)
    if state is None:
        raise PageError("no checkbox for option %s" % option)
    if state == bool(on):
        return False
    box = option_node(drv, option).find_element(By.CSS_SELECTOR, "input[type=checkbox]")
    _js(drv, "arguments[0].click()", box)
    _wait(drv, lambda d: flag_state(d, option) == bool(on), 5, "checkbox %s to change" % option)
    return True


def modal_text(drv):
    return _js(drv, "var m = document.querySelector('#modal_overlay .modal'); "
               "return (m && document.body.classList.contains('modal-overlay-active')) ? m.innerText : '';") or ""


def dismiss_modal(drv):
    for b in drv.find_elements(By.CSS_SELECTOR, "#modal_overlay .modal button"):
        if b.is_displayed():
            b.click()
            break
    _wait(drv, lambda d: not modal_text(d), 5, "the dialog to close")


def _page_button(drv, css):
    for b in drv.find_elements(By.CSS_SELECTOR, ".cbi-page-actions " + css):
        if b.is_displayed():
            return b
    raise PageError("no %s button on the page" % css)


def save(drv, timeout=15):
    """The Save button (stages the change in the session's uci delta); returns the error dialog's
    text if LuCI refused ('' when it saved)."""
    _page_button(drv, ".cbi-button-save").click()

    def settled(d):
        t = modal_text(d)
        if t:
            return t
        return "" if not d.find_elements(By.CSS_SELECTOR, ".cbi-page-actions button.spinning") else None

    time.sleep(0.3)
    res = _wait(drv, lambda d: settled(d) is not None and (settled(d) or "saved"), timeout, "Save to finish")
    return "" if res == "saved" else res


def save_apply(drv, timeout=60):
    """Save & Apply: LuCI's apply with rollback (rpcd `uci apply` + the confirm round), until
    'Configuration changes applied.' and the page reload."""
    _js(drv, "window.__ptBeforeApply = true")  # gone once LuCI has reloaded the page
    _page_button(drv, ".cbi-button-apply").click()
    seen = {"applying": False}

    def done(d):
        t = modal_text(d)
        if t and "error" in t.lower():
            raise PageError("Save & Apply failed: %s" % t)
        note = _js(d, "var n = document.querySelector('#applyreboot-container, .uci-change-legend');"
                   "var s = document.querySelector('.alert-message.notice, #modal_overlay .modal');"
                   "return s ? s.innerText : '';") or ""
        if "Applying configuration changes" in note:
            seen["applying"] = True
        if "rolled back" in note or "Failed to confirm" in note:
            raise PageError("apply was rolled back: %s" % note)
        return "Configuration changes applied" in note and note

    res = _wait(drv, done, timeout, "'Configuration changes applied'")
    # the page reloads itself after apply_display seconds
    wait_reloaded(drv, timeout)
    return res


def wait_reloaded(drv, timeout=30):
    """A new document (window.__ptBeforeApply unset) whose view and form have rendered."""
    _wait(drv, lambda d: _js(d, "return !window.__ptBeforeApply && document.readyState == 'complete'")
          and view_ready(d) and d.find_elements(By.ID, "passthrough_flows")
          and d.find_elements(By.ID, "cbi-%s-%s-enabled" % (CONFIG, SECTION)), timeout, "the page to reload after apply")


def read_flow_table(drv):
    """The flow table: {"columns": [...], "rows": [{column: text}], "placeholder": text or None}."""
    return _js(drv, """
        var t = document.getElementById('passthrough_flows');
        if (!t) return null;
        var cols = Array.prototype.map.call(t.querySelectorAll('.table-titles .th'), function(th) { return th.innerText.trim(); });
        var rows = [], placeholder = null;
        t.querySelectorAll('.tr:not(.table-titles)').forEach(function(tr) {
            if (tr.classList.contains('placeholder')) { placeholder = tr.innerText.trim(); return; }
            var cells = tr.querySelectorAll('.td'), r = {};
            cells.forEach(function(td, i) { r[cols[i] || i] = td.innerText.trim(); });
            rows.push(r);
        });
        return { columns: cols, rows: rows, placeholder: placeholder };""")


def read_status(drv):
    """The daemon status box: {"error": text or None, "summary": {label: value}}."""
    return _js(drv, """
        var e = document.getElementById('passthrough_error'), s = {};
        document.querySelectorAll('#passthrough_summary tr').forEach(function(tr) {
            var td = tr.querySelectorAll('td'); if (td.length == 2) s[td[0].innerText.trim()] = td[1].innerText.trim();
        });
        return { error: e ? e.innerText.trim() : null, summary: s };""")


def wait_flows(drv, pred, timeout=30):
    """Poll (the view polls every 5 s) until pred(read_flow_table(drv)) holds; returns the table."""
    return _wait(drv, lambda d: (lambda t: t if t and pred(t) else None)(read_flow_table(d)), timeout,
                 "the flow table to match")


def screenshot(drv, name, workdir):
    """PNG of the page into workdir, and into $PT_ARTEFACTS if set; returns the paths."""
    paths = []
    drv.execute_script("window.scrollTo(0, 0)")
    for d in filter(None, [workdir, os.environ.get("PT_ARTEFACTS")]):
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, name if name.endswith(".png") else name + ".png")
        try:
            drv.save_screenshot(p)
        except WebDriverException as e:
            raise PageError("screenshot %s failed: %s" % (p, e))
        paths.append(p)
    return paths
