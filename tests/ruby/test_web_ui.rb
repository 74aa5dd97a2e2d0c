# frozen_string_literal: true

# Sidekiq 6.4.1's Web UI (Sidekiq::Web, rendered in-process through Rack::Test) pointed at
# a Redis where tierone-worker is running a Sleep job and has left a retry and a dead job:
# every page renders (200) and shows tierone's process, job classes and error messages, and
# the buttons work on tierone: "Quiet" on the Busy page quiets the worker, "Retry Now" in
# the morgue makes tierone run the job again.
#
# Rack::Test instead of a bare Rack::MockRequest: Sidekiq::Web checks a CSRF token against
# the Rack session on every POST, so the client has to keep the session cookie between the
# GET that renders the form and the POST.
#
#   bash scripts/test.sh --services-only -- ruby tests/ruby/test_web_ui.rb

require_relative "helper"
require "cgi"
require "json"
require "rack/test"
require "rack/session/cookie"
require "sidekiq/web"

class TestWebUi < TieroneTest::Case
  include Rack::Test::Methods

  RETRY_MESSAGE = "web-ui retry boom"
  DEAD_MESSAGE = "web-ui dead boom"
  TAG = "webui-tag"

  def app
    @app ||= Rack::Builder.new do
      use Rack::Session::Cookie, secret: "x" * 64, same_site: true, max_age: 86_400
      run Sidekiq::Web
    end.to_app
  end

  def redis(&block)
    Sidekiq.redis(&block)
  end

  # A worker running one Tierone::Sleep, one job in the retry set, one in the dead set and
  # one waiting in a queue it does not fetch.
  def setup
    super
    @sleep_jid = Sidekiq::Client.push("class" => "Tierone::Sleep", "args" => [30_000])
    @retry_jid = Sidekiq::Client.push("class" => "Tierone::Fail", "args" => [RETRY_MESSAGE])
    @dead_jid = Sidekiq::Client.push("class" => "Tierone::Fail", "args" => [DEAD_MESSAGE],
                                     "retry" => 0)
    @waiting_jid = Sidekiq::Client.push("class" => "Tierone::Noop", "args" => ["waiting"],
                                        "queue" => "webonly")
    @worker = start_worker({ "TIERONE_QUEUES" => "default", "TIERONE_CONCURRENCY" => "5",
                             "TIERONE_BEAT_INTERVAL" => "200ms", "TIERONE_POLL_INTERVAL" => "200ms",
                             "TIERONE_TAG" => TAG, "TIERONE_SHUTDOWN_TIMEOUT" => "1s" },
                           ["--diagnostic-jobs"])
    wait_until(20, "sleep running, one retry, one dead") do
      @worker.assert_alive!
      Sidekiq::RetrySet.new.size == 1 && Sidekiq::DeadSet.new.size == 1 &&
        Sidekiq::Workers.new.to_a.size == 1 && Sidekiq::ProcessSet.new.to_a.size == 1
    end
    @process = Sidekiq::ProcessSet.new.first
    assert_equal @worker.pid, @process["pid"]
  end

  def get_ok(path)
    get path
    assert_equal 200, last_response.status, "GET #{path}: #{last_response.status}\n" \
                                            "#{last_response.body[0, 2000]}"
    last_response.body
  end

  # The first CSRF token in a rendered page.
  def csrf_token(body)
    token = body[/name='authenticity_token' value='([^']+)'/, 1]
    refute_nil token, "no authenticity_token in the page"
    token
  end

  def html(text)
    CGI.escapeHTML(text)
  end

  def test_pages_render_tierone_state
    body = get_ok("/")
    assert_includes body, "Dashboard"
    get_ok("/stats")
    stats = JSON.parse(last_response.body)["sidekiq"]
    assert_equal 1, stats["retries"]
    assert_equal 1, stats["dead"]
    assert_equal 1, stats["busy"]
    assert_equal 1, stats["processes"]
    assert_equal 1, stats["enqueued"]

    body = get_ok("/busy")
    assert_includes body, html(@process.identity), "identity in the process form"
    assert_includes body, "#{@process['hostname']}:#{@worker.pid}"
    assert_includes body, TAG
    assert_includes body, "Tierone::Sleep"
    assert_includes body, @sleep_jid
    assert_includes body, "30000"
    refute_includes body, "label-danger\">quiet<", "the process is not quiet yet"

    body = get_ok("/retries")
    assert_includes body, "Tierone::Fail"
    assert_includes body, html("RuntimeError: #{RETRY_MESSAGE}")
    entry = Sidekiq::RetrySet.new.first
    assert_includes body, "retries/#{entry.score}-#{@retry_jid}"
    body = get_ok("/retries/#{entry.score}-#{@retry_jid}")
    assert_includes body, "RuntimeError"
    assert_includes body, html(RETRY_MESSAGE)

    body = get_ok("/morgue")
    assert_includes body, "Tierone::Fail"
    assert_includes body, html("RuntimeError: #{DEAD_MESSAGE}")
    dead = Sidekiq::DeadSet.new.first
    body = get_ok("/morgue/#{dead.score}-#{@dead_jid}")
    assert_includes body, "RuntimeError"
    assert_includes body, html(DEAD_MESSAGE)

    body = get_ok("/queues")
    assert_includes body, "webonly"
    body = get_ok("/queues/webonly")
    assert_includes body, "Tierone::Noop"
    assert_includes body, "waiting"

    body = get_ok("/scheduled")
    assert_includes body, "Scheduled"
  end

  def test_busy_page_quiet_button_quiets_the_worker
    body = get_ok("/busy")
    post "/busy", "identity" => @process.identity, "quiet" => "1",
                  "authenticity_token" => csrf_token(body)
    assert_equal 302, last_response.status, "POST /busy: #{last_response.body[0, 500]}"
    assert_match(%r{/busy\z}, last_response.location)

    wait_until(10, "the worker quiet after the Busy page's Quiet button") do
      @worker.assert_alive!
      Sidekiq::ProcessSet.new.find { |p| p["pid"] == @worker.pid }&.stopping?
    end
    body = get_ok("/busy")
    assert_includes body, "label-danger\">quiet<"

    # Quiet means no new fetches: a new job stays queued while the worker keeps beating.
    jid = Sidekiq::Client.push("class" => "Tierone::Noop", "args" => ["after quiet"])
    beat = @process["beat"]
    wait_until(10, "two more heartbeats from the quiet worker") do
      p = Sidekiq::ProcessSet.new.find { |x| x["pid"] == @worker.pid }
      p && p["beat"] > beat + 0.3
    end
    assert_equal [jid], Sidekiq::Queue.new("default").map(&:jid)
    assert @worker.alive?
  end

  def test_morgue_retry_button_runs_the_job_again
    dead = Sidekiq::DeadSet.new.first
    key = "#{dead.score}-#{@dead_jid}"
    body = get_ok("/morgue/#{key}")
    post "/morgue/#{key}", "retry" => "Retry Now", "authenticity_token" => csrf_token(body)
    assert_equal 302, last_response.status
    again = wait_until(20, "the job back in the morgue after tierone ran it again") do
      e = Sidekiq::DeadSet.new.find_job(@dead_jid)
      e if e && e["retried_at"]
    end
    assert_equal DEAD_MESSAGE, again["error_message"]
    assert_equal 1, Sidekiq::DeadSet.new.size
    body = get_ok("/morgue")
    assert_includes body, html("RuntimeError: #{DEAD_MESSAGE}")
  end
end
