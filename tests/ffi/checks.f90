! The Fortran module's contract: statuses through stat=, arrays of every supported kind and
! of ranks 0 (a scalar), 1, 2, 3, 6 and 7, and refusal of what cannot be shared. Run by tests/fortran.rs, which
! checks the published regions from Rust:
!
!   checks-f NAME TRACKER    prints "ready VERSION TRACKER" once published, destroys the
!                            producer when a line arrives on stdin, then prints "done".
program checks
  use tcasm   ! c_double and the other kinds come with it
  implicit none
  type(tcasm_producer) :: p, again
  real(c_double), allocatable, target :: a(:,:), strided(:,:)
  real(c_float), allocatable, target :: b(:,:,:)
  integer(c_int32_t), target :: counts(7)
  integer(c_int64_t), target :: step
  real(c_double), allocatable, target :: phase(:,:,:,:,:,:)   ! a transport code's f(x,y,z,mu,eta,g)
  integer(c_int32_t), allocatable, target :: flags(:,:,:,:,:,:,:)
  integer(c_int64_t) :: version
  type(tcasm_stats) :: stats
  integer :: stat, i, j, k, failures, n
  character(64) :: name, tracker, line

  failures = 0
  call get_command_argument(1, name)
  call get_command_argument(2, tracker)

  call tcasm_create(p, "no spaces", stat=stat)
  call expect(stat, TCASM_ERR_INVALID, "create with a bad name")
  call tcasm_create(p, trim(name), trim(tracker), stat=stat, copy_threads=2)
  call expect(stat, TCASM_OK, "create")
  call tcasm_create(again, trim(name), stat=stat)
  call expect(stat, TCASM_ERR_NAME_IN_USE, "create a second producer of that name")
  if (index(tcasm_last_error(), "already running") == 0) call fail("last error: " // tcasm_last_error())
  if (tcasm_strerror(TCASM_ERR_NAME_IN_USE) /= "another producer has this name") call fail("strerror")
  call tcasm_publish(p, stat=stat)
  call expect(stat, TCASM_ERR_NO_REGIONS, "publish with nothing wrapped")

  allocate(a(5, 3), b(4, 3, 2), strided(10, 10))
  do j = 1, 3
    do i = 1, 5
      a(i, j) = 10 * i + j
    end do
  end do
  do k = 1, 2
    do j = 1, 3
      do i = 1, 4
        b(i, j, k) = 100 * i + 10 * j + k
      end do
    end do
  end do
  counts = [(i * i, i = 1, 7)]
  ! Element n (counting from 0 in memory order) holds n: in C order, the flat index.
  allocate(phase(3, 2, 4, 1, 2, 5), flags(2, 1, 2, 3, 1, 2, 2))
  phase = reshape([(real(n, c_double), n = 0, size(phase) - 1)], shape(phase))
  flags = reshape([(int(n, c_int32_t), n = 0, size(flags) - 1)], shape(flags))
  strided = 0
  step = 0

  call tcasm_wrap(p, "a", a, stat=stat)
  call expect(stat, TCASM_OK, "wrap a")
  call tcasm_wrap(p, "a", a, stat=stat)
  call expect(stat, TCASM_ERR_DUPLICATE, "wrap a twice")
  call tcasm_wrap(p, "b", b)
  call tcasm_wrap(p, "counts", counts)
  call tcasm_wrap(p, "step", step)
  call tcasm_wrap(p, "phase", phase)
  call tcasm_wrap(p, "flags", flags)
  call tcasm_wrap(p, "strided", strided(1:10:2, :), stat=stat)
  call expect(stat, TCASM_ERR_INVALID, "wrap a non-contiguous section")
  if (index(tcasm_last_error(), "not contiguous") == 0) &
    call fail("a refused section's tcasm_last_error() is '" // tcasm_last_error() // "'")

  step = 42
  ! No checkpoint: a status with stat=, and a quiet return without it.
  version = 77
  call tcasm_restore(p, "/nonexistent/tcasm-local:/nonexistent/tcasm-pfs", version, stat)
  call expect(stat, TCASM_ERR_NO_CHECKPOINT, "restore without a checkpoint")
  if (version /= 0) call fail("restore without a checkpoint gave a version")
  call tcasm_restore(p, "/nonexistent/tcasm-local")
  call tcasm_publish(p, version)
  call tcasm_wrap(p, "late", strided, stat=stat)
  call expect(stat, TCASM_ERR_AFTER_PUBLISH, "wrap after publishing")
  call tcasm_restore(p, "/nonexistent/tcasm-local", stat=stat)
  call expect(stat, TCASM_ERR_AFTER_PUBLISH, "restore after publishing")
  call tcasm_get_stats(p, stats)
  if (stats%versions /= version .or. stats%pages <= 0) call fail("stats")

  print '(a, 1x, i0, 1x, a)', "ready", version, tcasm_tracker(p)
  flush 6
  read (*, '(a)') line
  call tcasm_destroy(p)
  call tcasm_destroy(p)   ! a destroyed producer is NULL: nothing happens
  deallocate(a, b, strided, phase, flags)
  print '(a, 1x, i0)', "done", failures
  if (failures > 0) error stop 1

contains

  subroutine expect(got, want, what)
    integer, intent(in) :: got, want
    character(*), intent(in) :: what
    character(16) :: numbers
    if (got == want) return
    write (numbers, '(i0, " not ", i0)') got, want
    call fail(what // ": status " // trim(numbers) // ": " // tcasm_last_error())
  end subroutine

  subroutine fail(what)
    character(*), intent(in) :: what
    write (0, '(a)') what
    failures = failures + 1
  end subroutine

end program checks
