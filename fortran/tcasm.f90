! tcasm for Fortran: share the arrays of a running simulation (ALLOCATABLE or not) with
! observer processes on the same node. A thin ISO_C_BINDING layer over the C ABI
! (include/tcasm.h, libtcasm from `cargo build --release -p tcasm-capi`).
!
!   use tcasm
!   real(c_double), allocatable, target :: t(:,:)
!   type(tcasm_producer) :: producer
!   allocate(t(nx, ny))
!   call tcasm_create(producer, "heat")
!   call tcasm_wrap(producer, "temperature", t)
!   do step = 1, steps
!     ...                                ! write t as usual
!     call tcasm_publish(producer)       ! observers can now see this version of t
!   end do
!   (after the tcasm_wrap calls, `call tcasm_restore(producer, "/local/ckpt:/pfs/ckpt")` loads
!   the newest checkpoint `tcasm checkpoint` wrote, if there is one: a restart)
!   call tcasm_destroy(producer)
!
! Build: gfortran -c fortran/tcasm.f90, then link the program with -ltcasm.
!
! Rules, all checked where they can be:
! - A wrapped array must be contiguous, have the TARGET attribute (tcasm reads it during
!   tcasm_publish), and stay allocated until tcasm_destroy: do not DEALLOCATE, reallocate
!   (t = bigger) or MOVE_ALLOC it before. Every array must be wrapped before the first publish.
! - Element types: real(c_double), real(c_float), integer(c_int32_t), integer(c_int64_t);
!   rank 0 to 8 (TCASM_MAX_DIMS in tcasm.h; a scalar is a region of one element). Each kind has
!   one wrapper taking an assumed-rank array (`array(..)`, Fortran 2018), which covers every
!   rank: nothing is repeated per rank, and nothing is generated. A rank above 8 is refused
!   with TCASM_ERR_INVALID.
! - Observers see a region in C order, so its shape is the array's reversed: t(nx, ny) is a
!   region of shape (ny, nx), and in numpy a[j-1, i-1] is t(i, j) (a.T has Fortran's indexing).
! - Every procedure takes an optional integer `stat`: without it a failure stops the program
!   with tcasm's message (ERROR STOP); with it, stat is TCASM_OK or the failure's status and
!   tcasm_last_error() says why.
module tcasm
  use, intrinsic :: iso_c_binding, only: c_char, c_double, c_float, c_int, c_int32_t, c_int64_t, &
                                         c_null_char, c_null_ptr, c_ptr, c_size_t, c_loc, &
                                         c_associated, c_f_pointer
  implicit none
  private

  public :: tcasm_producer, tcasm_stats
  public :: tcasm_create, tcasm_wrap, tcasm_publish, tcasm_get_stats, tcasm_tracker, tcasm_destroy
  public :: tcasm_restore
  public :: tcasm_last_error, tcasm_strerror
  ! The kinds of the arrays tcasm_wrap takes, so that `use tcasm` alone declares them.
  public :: c_double, c_float, c_int32_t, c_int64_t

  ! Why this module refused the last tcasm_wrap itself (a non-contiguous or empty array),
  ! before any C call: tcasm_last_error() says it until the next failed C call.
  character(:), allocatable :: refused

  ! Status codes (enum tcasm_status in tcasm.h).
  integer, parameter, public :: TCASM_OK = 0, TCASM_ERR_NULL = 1, TCASM_ERR_INVALID = 2, &
      TCASM_ERR_NAME_IN_USE = 3, TCASM_ERR_ENDPOINT = 4, TCASM_ERR_TRACKER = 5, &
      TCASM_ERR_DUPLICATE = 6, TCASM_ERR_AFTER_PUBLISH = 7, TCASM_ERR_MISALIGNED = 8, &
      TCASM_ERR_CANNOT_TRACK = 9, TCASM_ERR_NO_REGIONS = 10, TCASM_ERR_PUBLISH = 11, &
      TCASM_ERR_IO = 12, TCASM_ERR_INTERNAL = 13
  integer, parameter, public :: TCASM_ERR_NO_CHECKPOINT = 14

  ! Element types (tcasm_dtype in tcasm.h); tcasm_wrap picks one from the array's type.
  integer(c_int32_t), parameter :: TCASM_I32 = 6, TCASM_I64 = 8, TCASM_F32 = 9, TCASM_F64 = 10

  !> A producer: the endpoint observers attach to, and the arrays it shares.
  type :: tcasm_producer
    type(c_ptr) :: handle = c_null_ptr
  end type

  !> What a producer has done so far (tcasm_producer_stats in tcasm.h).
  type, bind(C) :: tcasm_stats
    integer(c_int64_t) :: versions = 0          ! versions published
    integer(c_int64_t) :: last_pages_copied = 0 ! pages the last publish found changed and copied
    integer(c_int64_t) :: last_publish_ns = 0   ! nanoseconds in the last publish
    integer(c_int64_t) :: total_publish_ns = 0  ! nanoseconds in all publishes
    integer(c_int64_t) :: store_bytes = 0       ! memory the snapshot store holds
    integer(c_int64_t) :: live_pins = 0         ! snapshots observers held at the last publish
    integer(c_int64_t) :: mapping_runs = 0      ! mappings an observer needs for the last version
    integer(c_int64_t) :: planes = 0            ! planes in the snapshot pool
    integer(c_int64_t) :: pages = 0             ! pages of all regions
    integer(c_int64_t) :: reserve_bytes = 0     ! free slots kept allocated for the next publishes
  end type

  !> call tcasm_wrap(producer, name, array [, stat]): share `array` as region `name`.
  interface tcasm_wrap
    module procedure wrap_f64, wrap_f32, wrap_i32, wrap_i64
  end interface

  interface
    function c_create_with(name, tracker, max_observers, out) result(status) &
        bind(C, name="tcasm_producer_create_with")
      import :: c_char, c_int, c_ptr, c_size_t
      character(kind=c_char), intent(in) :: name(*), tracker(*)
      integer(c_size_t), value :: max_observers
      type(c_ptr), intent(out) :: out
      integer(c_int) :: status
    end function

    function c_wrap(producer, name, dtype, data, shape, ndim) result(status) bind(C, name="tcasm_wrap")
      import :: c_char, c_int, c_int32_t, c_ptr, c_size_t
      type(c_ptr), value :: producer
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int32_t), value :: dtype
      type(c_ptr), value :: data
      integer(c_size_t), intent(in) :: shape(*)
      integer(c_size_t), value :: ndim
      integer(c_int) :: status
    end function

    function c_set_copy_threads(producer, threads) result(status) bind(C, name="tcasm_set_copy_threads")
      import :: c_int, c_ptr, c_size_t
      type(c_ptr), value :: producer
      integer(c_size_t), value :: threads
      integer(c_int) :: status
    end function

    function c_publish(producer, version) result(status) bind(C, name="tcasm_publish")
      import :: c_int, c_int64_t, c_ptr
      type(c_ptr), value :: producer
      integer(c_int64_t), intent(out) :: version
      integer(c_int) :: status
    end function

    function c_restore(producer, dirs, version) result(status) bind(C, name="tcasm_restore")
      import :: c_char, c_int, c_int64_t, c_ptr
      type(c_ptr), value :: producer
      character(kind=c_char), intent(in) :: dirs(*)
      integer(c_int64_t), intent(inout) :: version
      integer(c_int) :: status
    end function

    function c_stats(producer, stats) result(status) bind(C, name="tcasm_stats")
      import :: c_int, c_ptr, tcasm_stats
      type(c_ptr), value :: producer
      type(tcasm_stats), intent(out) :: stats
      integer(c_int) :: status
    end function

    function c_tracker(producer) result(name) bind(C, name="tcasm_producer_tracker")
      import :: c_ptr
      type(c_ptr), value :: producer
      type(c_ptr) :: name
    end function

    subroutine c_destroy(producer) bind(C, name="tcasm_producer_destroy")
      import :: c_ptr
      type(c_ptr), value :: producer
    end subroutine

    function c_last_error() result(message) bind(C, name="tcasm_last_error")
      import :: c_ptr
      type(c_ptr) :: message
    end function

    function c_strerror(status) result(message) bind(C, name="tcasm_strerror")
      import :: c_int, c_ptr
      integer(c_int), value :: status
      type(c_ptr) :: message
    end function

    function c_strlen(s) result(n) bind(C, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
      integer(c_size_t) :: n
    end function
  end interface

contains

  !> Creates the producer `name` (1 to 64 letters, digits, '_', '-', '.'; "heat.%r" makes a
  !> rank of an MPI job, %r replaced by the rank from mpirun's or srun's environment, and
  !> tcasm_restore then loads the newest global version). `tracker`: "auto"
  !> (the default), "async", "sync", "deferred" or "copy"; `max_observers`: 0 for the default;
  !> `copy_threads`: threads that share each publish's copying (default 1).
  subroutine tcasm_create(producer, name, tracker, max_observers, stat, copy_threads)
    type(tcasm_producer), intent(out) :: producer
    character(*), intent(in) :: name
    character(*), intent(in), optional :: tracker
    integer, intent(in), optional :: max_observers
    integer, intent(out), optional :: stat
    integer, intent(in), optional :: copy_threads
    integer(c_size_t) :: most
    integer(c_int) :: status
    most = 0
    if (present(max_observers)) most = int(max(max_observers, 0), c_size_t)
    if (present(tracker)) then
      status = c_create_with(c_string(name), c_string(tracker), most, producer%handle)
    else
      status = c_create_with(c_string(name), c_string("auto"), most, producer%handle)
    end if
    if (status == TCASM_OK .and. present(copy_threads)) then
      status = c_set_copy_threads(producer%handle, int(max(copy_threads, 1), c_size_t))
    end if
    call check(status, stat)
  end subroutine

  subroutine wrap_f64(producer, name, array, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: name
    real(c_double), intent(in), target :: array(..)
    integer, intent(out), optional :: stat
    if (.not. usable(name, is_contiguous(array), size(array), stat)) return
    call wrap_address(producer, name, TCASM_F64, c_loc(array), shape(array, c_size_t), stat)
  end subroutine

  subroutine wrap_f32(producer, name, array, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: name
    real(c_float), intent(in), target :: array(..)
    integer, intent(out), optional :: stat
    if (.not. usable(name, is_contiguous(array), size(array), stat)) return
    call wrap_address(producer, name, TCASM_F32, c_loc(array), shape(array, c_size_t), stat)
  end subroutine

  subroutine wrap_i32(producer, name, array, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: name
    integer(c_int32_t), intent(in), target :: array(..)
    integer, intent(out), optional :: stat
    if (.not. usable(name, is_contiguous(array), size(array), stat)) return
    call wrap_address(producer, name, TCASM_I32, c_loc(array), shape(array, c_size_t), stat)
  end subroutine

  subroutine wrap_i64(producer, name, array, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: name
    integer(c_int64_t), intent(in), target :: array(..)
    integer, intent(out), optional :: stat
    if (.not. usable(name, is_contiguous(array), size(array), stat)) return
    call wrap_address(producer, name, TCASM_I64, c_loc(array), shape(array, c_size_t), stat)
  end subroutine

  !> Whether an array can be wrapped: its elements must be where c_loc says, one after another.
  logical function usable(name, contiguous, elements, stat)
    character(*), intent(in) :: name
    logical, intent(in) :: contiguous
    integer, intent(in) :: elements
    integer, intent(out), optional :: stat
    usable = contiguous .and. elements > 0
    if (usable) return
    if (.not. contiguous) then
      refused = "tcasm_wrap: region " // name // ": the array is not contiguous (a strided section?); " // &
                "wrap the whole array, or a contiguous copy"
    else
      refused = "tcasm_wrap: region " // name // ": the array is empty or not allocated"
    end if
    if (present(stat)) then
      stat = TCASM_ERR_INVALID
    else
      error stop refused
    end if
  end function

  subroutine wrap_address(producer, name, dtype, address, fortran_shape, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: name
    integer(c_int32_t), intent(in) :: dtype
    type(c_ptr), intent(in) :: address
    integer(c_size_t), intent(in) :: fortran_shape(:)
    integer, intent(out), optional :: stat
    integer(c_size_t) :: dims(max(size(fortran_shape), 1))
    integer :: n
    n = size(fortran_shape)
    if (n == 0) then
      dims = 1_c_size_t                            ! a scalar: one element
    else
      dims = fortran_shape(n:1:-1)                 ! column-major: C order reversed
    end if
    call check(c_wrap(producer%handle, c_string(name), dtype, address, dims, int(size(dims), c_size_t)), stat)
  end subroutine

  !> Publishes what the wrapped arrays hold now as a new version (its number in `version`).
  subroutine tcasm_publish(producer, version, stat)
    type(tcasm_producer), intent(in) :: producer
    integer(c_int64_t), intent(out), optional :: version
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: v
    call check(c_publish(producer%handle, v), stat)
    if (present(version)) version = v
  end subroutine

  !> Restarts from the newest complete checkpoint in `dirs` ("LOCAL:PERSISTENT", level 1
  !> first): loads it into the wrapped arrays (every one must match the checkpoint's name,
  !> type and shape, and every checksum verify, before anything is written) and numbers the
  !> next version after it, which `version` receives. Call it after wrapping every array and
  !> before the first publish. No checkpoint (a first run) is not an error: `version` is 0,
  !> `stat` is TCASM_ERR_NO_CHECKPOINT, and without `stat` the call simply returns.
  subroutine tcasm_restore(producer, dirs, version, stat)
    type(tcasm_producer), intent(in) :: producer
    character(*), intent(in) :: dirs
    integer(c_int64_t), intent(out), optional :: version
    integer, intent(out), optional :: stat
    integer(c_int64_t) :: v
    integer(c_int) :: status
    v = 0
    status = c_restore(producer%handle, c_string(dirs), v)
    if (present(version)) version = v
    if (status == TCASM_ERR_NO_CHECKPOINT .and. .not. present(stat)) return
    call check(status, stat)
  end subroutine

  subroutine tcasm_get_stats(producer, stats, stat)
    type(tcasm_producer), intent(in) :: producer
    type(tcasm_stats), intent(out) :: stats
    integer, intent(out), optional :: stat
    call check(c_stats(producer%handle, stats), stat)
  end subroutine

  !> The tracker in use: "auto", "async", "sync", "deferred" or "copy".
  function tcasm_tracker(producer) result(name)
    type(tcasm_producer), intent(in) :: producer
    character(:), allocatable :: name
    name = fortran_string(c_tracker(producer%handle))
  end function

  !> Destroys the producer; the wrapped arrays may be deallocated afterwards.
  subroutine tcasm_destroy(producer)
    type(tcasm_producer), intent(inout) :: producer
    call c_destroy(producer%handle)
    producer%handle = c_null_ptr
  end subroutine

  !> Why the last failed tcasm call of this thread failed.
  function tcasm_last_error() result(message)
    character(:), allocatable :: message
    if (allocated(refused)) then
      message = refused
    else
      message = fortran_string(c_last_error())
    end if
  end function

  !> What a status code means.
  function tcasm_strerror(status) result(message)
    integer, intent(in) :: status
    character(:), allocatable :: message
    message = fortran_string(c_strerror(int(status, c_int)))
  end function

  subroutine check(status, stat)
    integer(c_int), intent(in) :: status
    integer, intent(out), optional :: stat
    character(:), allocatable :: message
    if (status /= TCASM_OK .and. allocated(refused)) deallocate(refused)
    if (present(stat)) then
      stat = int(status)
    else if (status /= TCASM_OK) then
      message = tcasm_last_error()   ! (not in the ERROR STOP: gfortran 12 crashes on that)
      error stop message
    end if
  end subroutine

  pure function c_string(s) result(c)
    character(*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: c
    c = trim(s) // c_null_char
  end function

  function fortran_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    if (.not. c_associated(p)) then
      s = ""
      return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(n) :: s)
    do i = 1, n
      s(i:i) = chars(i)
    end do
  end function

end module tcasm
