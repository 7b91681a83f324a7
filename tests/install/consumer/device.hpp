// Device memory for the consumer's GPU run (CUDA runtime, kept out of main.cpp).
#pragma once

#include <cstddef>
#include <string>

namespace consumer {

// True when the CUDA runtime sees at least one device; `why` says why not otherwise.
bool gpu_present(std::string& why);
void* device_alloc(std::size_t bytes);
void device_free(void* ptr);
void copy_to_device(void* dst, const void* src, std::size_t bytes);
void copy_to_host(void* dst, const void* src, std::size_t bytes);
void device_synchronize();

}  // namespace consumer
