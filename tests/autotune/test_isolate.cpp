// Worker processes: a crash, a hang or an exception costs only the item that caused it.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include <spattn/error.hpp>

#include "autotune/isolate.hpp"
#include "autotune/pool.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

using nlohmann::json;

IsolateOptions isolated(double timeout = 30) {
  IsolateOptions o;
  o.isolate = true;
  o.item_timeout_s = timeout;
  return o;
}

TEST(Isolate, ItemsRunInAChildAndReportInOrder) {
  std::vector<size_t> seen;
  const auto out = run_items(
      5, [](size_t i) { return json{{"square", i * i}, {"pid", getpid()}}; }, isolated(),
      [&](size_t i, const ItemOutcome&) { seen.push_back(i); });
  ASSERT_EQ(out.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(out[i].status, ItemStatus::kDone);
    EXPECT_EQ(out[i].value["square"], i * i);
    EXPECT_NE(out[i].value["pid"].get<int>(), getpid()) << "ran in the parent";
    EXPECT_EQ(out[i].value["pid"], out[0].value["pid"]) << "one worker serves items until something goes wrong";
  }
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1, 2, 3, 4}));
}

TEST(Isolate, ACrashCostsOnlyItsItem) {
  const auto out = run_items(
      5,
      [](size_t i) -> json {
        if (i == 1) std::abort();
        if (i == 3) std::raise(SIGSEGV);
        return json{{"i", i}, {"pid", getpid()}};
      },
      isolated());
  EXPECT_EQ(out[0].status, ItemStatus::kDone);
  EXPECT_EQ(out[1].status, ItemStatus::kCrashed);
  EXPECT_NE(out[1].detail.find("signal 6"), std::string::npos) << out[1].detail;
  EXPECT_EQ(out[2].status, ItemStatus::kDone);
  EXPECT_EQ(out[3].status, ItemStatus::kCrashed);
  EXPECT_NE(out[3].detail.find("signal 11"), std::string::npos) << out[3].detail;
  EXPECT_EQ(out[4].status, ItemStatus::kDone);
  EXPECT_NE(out[0].value["pid"], out[2].value["pid"]) << "a fresh worker after the crash";
}

TEST(Isolate, AnExitCostsOnlyItsItem) {
  const auto out = run_items(
      3, [](size_t i) -> json {
        if (i == 0) _exit(7);
        return json{{"i", i}};
      },
      isolated());
  EXPECT_EQ(out[0].status, ItemStatus::kCrashed);
  EXPECT_NE(out[0].detail.find("status 7"), std::string::npos) << out[0].detail;
  EXPECT_EQ(out[1].status, ItemStatus::kDone);
  EXPECT_EQ(out[2].status, ItemStatus::kDone);
}

TEST(Isolate, AHangIsKilledAfterTheTimeout) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto out = run_items(
      3, [](size_t i) -> json {
        if (i == 1) std::this_thread::sleep_for(std::chrono::seconds(60));
        return json{{"i", i}};
      },
      isolated(1.0));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 20);
  EXPECT_EQ(out[0].status, ItemStatus::kDone);
  EXPECT_EQ(out[1].status, ItemStatus::kTimedOut);
  EXPECT_NE(out[1].detail.find("killed"), std::string::npos) << out[1].detail;
  EXPECT_EQ(out[2].status, ItemStatus::kDone);
}

TEST(Isolate, RestartRequestsAndExceptionsGetAFreshWorker) {
  const auto out = run_items(
      4,
      [](size_t i) -> json {
        if (i == 1) return json{{"status", "fault"}, {"restart", true}, {"pid", getpid()}};
        if (i == 2) throw std::runtime_error("boom");
        return json{{"pid", getpid()}};
      },
      isolated());
  for (const auto& o : out) EXPECT_EQ(o.status, ItemStatus::kDone);
  EXPECT_EQ(out[0].value["pid"], out[1].value["pid"]);
  EXPECT_EQ(out[2].value["error"], "boom");
  EXPECT_TRUE(out[2].value["restart"].get<bool>());
  EXPECT_NE(out[3].value["pid"], out[1].value["pid"]);
}

TEST(Isolate, InProcessStopsAtTheFirstFailure) {
  IsolateOptions o;
  o.isolate = false;
  const auto out = run_items(
      3, [](size_t i) -> json {
        if (i == 1) return json{{"status", "fault"}, {"restart", true}};
        return json{{"pid", getpid()}};
      },
      o);
  EXPECT_EQ(out[0].status, ItemStatus::kDone);
  EXPECT_EQ(out[0].value["pid"], getpid());
  EXPECT_EQ(out[1].status, ItemStatus::kDone);
  EXPECT_EQ(out[2].status, ItemStatus::kNotRun);
  EXPECT_FALSE(out[2].detail.empty());
}

TEST(Pool, RunsEveryItemOnceWithBoundedThreads) {
  std::vector<int> hits(100, 0);
  std::atomic<int> live{0}, peak{0};
  parallel_for(hits.size(), 3, [&](size_t i) {
    const int now = ++live;
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    ++hits[i];
    --live;
  });
  for (int h : hits) EXPECT_EQ(h, 1);
  EXPECT_LE(peak.load(), 3);
  parallel_for(0, 4, [](size_t) { FAIL(); });
}

TEST(Pool, ThreadCountFromTheEnvironment) {
  {
    test::ScopedEnv env("SPATTN_NVRTC_THREADS", "3");
    EXPECT_EQ(nvrtc_threads(), 3);
  }
  {
    test::ScopedEnv env("SPATTN_NVRTC_THREADS", std::nullopt);
    EXPECT_GE(nvrtc_threads(), 1);
  }
  test::ScopedEnv env("SPATTN_NVRTC_THREADS", "lots");
  try {
    nvrtc_threads();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SPATTN_NVRTC_THREADS"), std::string::npos);
  }
}

}  // namespace
}  // namespace spattn::autotune
