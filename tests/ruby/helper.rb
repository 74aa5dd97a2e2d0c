# frozen_string_literal: true

# helper.rb: shared code for the Ruby interop tests (tests/ruby/test_*.rb).
#
# Those tests prove tierone-worker is wire-compatible with Ruby Sidekiq 6.4.1 (Debian's
# ruby-sidekiq): Ruby pushes, inspects and manages jobs with Sidekiq's own client and API,
# and the real tierone-worker binary processes them against the real Redis that
# scripts/test.sh starts. ctest runs each file as `ruby FILE` with TIERONE_BIN_DIR set;
# by hand: `bash scripts/test.sh --services-only -- ruby tests/ruby/test_x.rb`.
#
# A test file:
#
#   require_relative "helper"
#
#   class TestSomething < TieroneTest::Case   # setup: Sidekiq client on a flushed db
#     def test_it
#       worker = start_worker({ "TIERONE_QUEUES" => "default" }, ["--diagnostic-jobs"])
#       Sidekiq::Client.push("class" => "Tierone::Noop", "args" => [])
#       wait_until(30, "job processed") { Sidekiq::Stats.new.processed >= 1 }
#       assert_equal 0, worker.stop
#     end
#   end
#
# Helpers (TieroneTest::Helpers, included in TieroneTest::Case):
#   redis_url(db = current)   the test Redis URL with database `db`
#   use_redis_db(db)          point the Sidekiq client (and later workers) at database `db`
#   flushdb                   empty the current database
#   start_worker(env, args)   spawn tierone-worker; returns a TieroneTest::Worker
#   wait_until(timeout, msg)  poll the block every 20 ms until truthy; fail on timeout
# Workers a test started are stopped in its teardown (their logs printed if it failed);
# any still running when Ruby exits are killed.

require "fileutils"
require "logger"
require "tmpdir"
require "uri"

module TieroneTest
  SOURCE_DIR = ENV.fetch("TIERONE_SOURCE_DIR", File.expand_path("../..", __dir__))
  BIN_DIR = ENV.fetch("TIERONE_BIN_DIR", File.join(SOURCE_DIR, "build"))
  WORKER_BIN = File.join(BIN_DIR, "tierone-worker")
  POLL_INTERVAL = 0.02
  LOG_TAIL_LINES = 60

  @workers = []
  @tmpdir = nil

  class << self
    # Every worker started by this process that has not been reaped yet.
    attr_reader :workers

    # One temp dir per test process for worker logs; removed at exit unless
    # TIERONE_KEEP_LOGS is set.
    def tmpdir
      @tmpdir ||= Dir.mktmpdir("tierone-ruby-")
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # Kills whatever workers are left (a test that crashed, an interrupt) and removes the
    # temp dir. Runs at exit.
    def cleanup
      @workers.dup.each do |w|
        warn "helper.rb: killing leftover tierone-worker pid #{w.pid} (log #{w.log_path})"
        w.kill9
      end
      return unless @tmpdir

      if ENV["TIERONE_KEEP_LOGS"]
        warn "helper.rb: worker logs kept in #{@tmpdir}"
      else
        FileUtils.rm_rf(@tmpdir)
      end
    end
  end

  # A running tierone-worker process.
  class Worker
    attr_reader :pid, :log_path, :env, :args
    # Process::Status once the process has been reaped (:unknown if it was reaped
    # elsewhere), else nil.
    attr_reader :status

    def initialize(pid, log_path, env, args)
      @pid = pid
      @log_path = log_path
      @env = env
      @args = args
      @status = nil
    end

    # True while the process runs (reaps it if it has exited).
    def alive?
      reap(false)
      @status.nil?
    end

    # Sends `signal` and waits up to `timeout` seconds for the process to exit. Returns
    # its exit code (128 + signal number when a signal ended it; the full Process::Status
    # is in #status). On timeout kills it with SIGKILL and fails the test.
    def stop(signal = "TERM", timeout = 30)
      signal_process(signal)
      deadline = TieroneTest.now + timeout
      until reap(false)
        if TieroneTest.now >= deadline
          kill9
          raise Minitest::Assertion,
                "tierone-worker pid #{pid} did not exit within #{timeout}s of SIG#{signal}; " \
                "killed it.\n#{log_tail}"
        end
        sleep POLL_INTERVAL
      end
      exit_code
    end

    # SIGKILL (a crash, as far as Redis can tell) and reap. Returns the exit code (137).
    def kill9
      signal_process("KILL")
      reap(true)
      exit_code
    end

    # Fails the test (with the log tail) if the process has exited.
    def assert_alive!
      return true if alive?

      raise Minitest::Assertion,
            "tierone-worker pid #{pid} exited unexpectedly (#{@status.inspect}).\n#{log_tail}"
    end

    # Everything the worker printed so far.
    def log
      File.exist?(log_path) ? File.read(log_path) : ""
    end

    def log_tail(lines = LOG_TAIL_LINES)
      tail = log.lines.last(lines).join
      "--- last #{lines} lines of #{log_path} ---\n#{tail}--- end of log ---"
    end

    # Exit code of a reaped process, nil while it runs.
    def exit_code
      return nil unless @status.is_a?(Process::Status)

      @status.exitstatus || (128 + @status.termsig.to_i)
    end

    private

    def signal_process(signal)
      Process.kill(signal, pid) if @status.nil?
    rescue Errno::ESRCH
      nil
    end

    # Collects the exit status; with block=true waits for it. Returns true once reaped.
    def reap(block)
      return true if @status

      flags = block ? 0 : Process::WNOHANG
      begin
        _, st = Process.waitpid2(pid, flags)
      rescue Errno::ECHILD
        st = nil
        @status = :unknown
      end
      @status = st if st
      TieroneTest.workers.delete(self) if @status
      !@status.nil?
    end
  end

  class << self
    # Workers started by the current test (reaped ones included); cleared in setup.
    def started
      @started ||= []
    end

    def next_worker_number
      @worker_number = (@worker_number || 0) + 1
    end

    # TIERONE_TEST_REDIS_URL, or exit with a clear message when it is missing.
    def base_redis_url
      url = ENV["TIERONE_TEST_REDIS_URL"].to_s
      if url.empty?
        abort "helper.rb: TIERONE_TEST_REDIS_URL is not set. Run the Ruby tests through " \
              "scripts/test.sh, or: bash scripts/test.sh --services-only -- ruby #{$PROGRAM_NAME}"
      end
      url
    end

    # The database named in TIERONE_TEST_REDIS_URL (0 when it names none).
    def default_db
      path = URI.parse(base_redis_url).path.to_s.delete("/")
      path.empty? ? 0 : Integer(path)
    end

    # The database the Sidekiq client and new workers use.
    def current_db
      @current_db ||= default_db
    end

    def url_for_db(db)
      uri = URI.parse(base_redis_url)
      uri.path = "/#{Integer(db)}"
      uri.to_s
    end

    def configure_sidekiq(db)
      @current_db = Integer(db)
      url = url_for_db(@current_db)
      Sidekiq.configure_client { |config| config.redis = { url: url, size: 2 } }
    end
  end

  # The helpers every test uses.
  module Helpers
    # The test Redis URL with database `db` (default: the database in use).
    def redis_url(db = nil)
      TieroneTest.url_for_db(db.nil? ? TieroneTest.current_db : db)
    end

    # Points the Sidekiq client, and workers started afterwards, at database `db`.
    def use_redis_db(db)
      TieroneTest.configure_sidekiq(db)
    end

    # Empties the database in use.
    def flushdb
      Sidekiq.redis(&:flushdb)
    end

    # Spawns tierone-worker with TIERONE_REDIS_URL (the database in use),
    # TIERONE_ADMIN_PORT=0 and TIERONE_LOG_LEVEL=info, overridden by `env` (a nil value
    # unsets a variable); `args` are its arguments. stdout and stderr go to a log file.
    # Fails the test at once if the binary is missing. The test's teardown stops it.
    def start_worker(env = {}, args = [])
      unless File.executable?(WORKER_BIN)
        raise Minitest::Assertion,
              "tierone-worker not found at #{WORKER_BIN} (TIERONE_BIN_DIR=#{BIN_DIR.inspect}); build it first"
      end
      full_env = {
        "TIERONE_REDIS_URL" => redis_url,
        "TIERONE_ADMIN_PORT" => "0",
        "TIERONE_LOG_LEVEL" => "info"
      }
      env.each { |k, v| full_env[k.to_s] = v&.to_s }
      log_path = File.join(TieroneTest.tmpdir, "worker-#{TieroneTest.next_worker_number}.log")
      pid = Process.spawn(full_env, WORKER_BIN, *args.map(&:to_s),
                          in: File::NULL, out: log_path, err: %i[child out])
      worker = Worker.new(pid, log_path, full_env, args)
      TieroneTest.workers << worker
      TieroneTest.started << worker
      worker
    end

    # Calls the block every 20 ms until it returns a truthy value, and returns that value.
    # After `timeout` seconds fails the test with `message` (a String, or a Proc called
    # then), the block's last value and the log tails of this test's workers that died.
    def wait_until(timeout = 20, message = nil)
      deadline = TieroneTest.now + timeout
      loop do
        value = yield
        return value if value

        if TieroneTest.now >= deadline
          what = message.respond_to?(:call) ? message.call : message
          dead = TieroneTest.started.reject(&:alive?).map do |w|
            "\nworker #{w.pid} has exited (#{w.status.inspect})\n#{w.log_tail(20)}"
          end
          raise Minitest::Assertion,
                "timed out after #{timeout}s waiting for #{what || 'condition'} " \
                "(last value: #{value.inspect})#{dead.join}"
        end
        sleep POLL_INTERVAL
      end
    end
  end
end

# Registered before minitest/autorun's own at_exit, so it runs after the tests.
at_exit { TieroneTest.cleanup }

require "minitest/autorun"
require "sidekiq"
require "sidekiq/api"

Sidekiq.logger.level = Logger::WARN
# redis-rb 4.8 warns on every SADD Sidekiq's client makes; the warning is not ours to fix.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
TieroneTest.configure_sidekiq(TieroneTest.default_db) # exits with a message if no URL

module TieroneTest
  # Base class of the interop tests: a flushed database before each test; after it, every
  # worker the test started is stopped (SIGTERM, 30 s) and its log printed if the test failed.
  class Case < Minitest::Test
    include Helpers

    def setup
      super
      TieroneTest.started.clear
      use_redis_db(TieroneTest.default_db)
      flushdb
    end

    def teardown
      failed = !passed?
      TieroneTest.started.each do |w|
        begin
          w.stop("TERM", 30) if w.alive?
        rescue Minitest::Assertion => e
          warn e.message
          failed = true
        end
        warn "#{name}: worker #{w.pid} #{w.status.inspect}\n#{w.log_tail}" if failed
      end
      TieroneTest.started.clear
      super
    end
  end
end
