# Ruby Sidekiq side of the worker benchmark (bench/worker.sh): the same job classes tierone
# registers with --diagnostic-jobs, so both run byte-identical jobs from the same queue.
#
#   REDIS_URL=redis://127.0.0.1:PORT/0 BENCH_EXPECT=N BENCH_DONE_FILE=/tmp/x \
#     sidekiq -r ./bench/ruby_jobs.rb -c 10 -q default
#
# Choices that affect the numbers (also in bench/README.md):
# - Logging: Sidekiq 6.4.1 logs "start" and "done" at INFO for every job; the logger is set
#   to WARN here so log formatting and writing do not dominate (tierone runs at warn too).
# - redis-rb deprecation warnings are silenced (see below).
# - HttpGet keeps one Net::HTTP session per thread alive (keep-alive, like tierone's
#   libcurl connection cache), opened on the thread's first job and reused afterwards.
# - Completion: BENCH_EXPECT jobs must finish; each perform increments a process-wide
#   counter under a Mutex (well under a microsecond) and the job that reaches
#   BENCH_EXPECT writes the CLOCK_MONOTONIC second to BENCH_DONE_FILE, which
#   bench_push_jobs polls. Sidekiq 6.4.1's BasicFetch has no in-progress store in Redis,
#   so "finished" cannot be observed from Redis the way it is for tierone.
require "sidekiq"
require "net/http"
require "uri"
require "logger"

# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a deprecation warning on every
# BRPOP Sidekiq 6.4.1 issues ("timeout as a positional argument"): one stderr line per job.
# Silence it so the benchmark measures Sidekiq, not a packaging mismatch.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

Sidekiq.configure_server do |_config|
  Sidekiq.logger.level = Logger::WARN
end

module BenchDone
  LOCK = Mutex.new
  EXPECT = Integer(ENV.fetch("BENCH_EXPECT", "0"))
  FILE_PATH = ENV["BENCH_DONE_FILE"]
  @count = 0

  def self.finished!
    now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    n = LOCK.synchronize { @count += 1 }
    return unless n == EXPECT && FILE_PATH

    tmp = "#{FILE_PATH}.tmp"
    File.write(tmp, format("%.6f\n", now))
    File.rename(tmp, FILE_PATH) # atomic: the poller never reads a half-written file
  end
end

module Tierone
  class Noop
    include Sidekiq::Worker

    def perform(*)
      BenchDone.finished!
    end
  end

  class HttpGet
    include Sidekiq::Worker

    def perform(url)
      uri = URI(url)
      http = Thread.current[:bench_http]
      unless http&.started?
        http = Net::HTTP.new(uri.host, uri.port)
        http.keep_alive_timeout = 30
        http.start
        Thread.current[:bench_http] = http
      end
      res = http.request(Net::HTTP::Get.new(uri.request_uri))
      raise "HTTP #{res.code}" unless res.is_a?(Net::HTTPSuccess)

      BenchDone.finished!
    end
  end
end
