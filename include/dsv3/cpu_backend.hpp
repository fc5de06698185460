// dsv3/cpu_backend.hpp — kept so that existing #includes still compile: the CPU backend (cpu/backend.hpp) and the dispatcher (dispatch.hpp).
#pragma once

#include "cpu/backend.hpp"
#include "dispatch.hpp"
